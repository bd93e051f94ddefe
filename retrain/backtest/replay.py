r"""The replay driver: one policy over the rows, on a simulated clock, through the workers' own steps.

Ticks lie on a grid of ``sweep_every`` simulated time. At a tick ``T`` (the clock reads ``T``):

1. **Outcomes.** Rows predicted earlier whose label is visible (``ts + label_delay
   <= T``) and that a model served are reported through
   :func:`retrain.steps.ingest.ingest`, in :class:`~retrain.core.payloads.IngestBatch`\ es of
   at most 20,000 rows, under the version that served them: metric buckets per
   version, the feature sample.
2. **Beat.** What ``celeryconfig.beat_schedule`` would have fired by ``T``: the
   first training once the warm-up is over, the model's schedule entries
   (:mod:`retrain.core.cron`, slot keys by
   :func:`retrain.steps.requests.slot_key`), the fixed period of an
   ``every:`` policy, ``retrain.sweep`` (when every trigger is off: when a deferred
   request is due, hourly while labels come in, daily otherwise),
   ``retrain.evaluate_rollouts`` while a run is in flight, ``retrain.reconcile``
   hourly while a run is in flight (an in-process replay loses no message and
   no lease otherwise) and ``retrain.retention`` every ``retention.max_age_days`` at
   most, after something changed, and once at the end (it only deletes old
   versions, and its cost grows with every version ever made). After a step that
   enqueued work, the outbox is drained in-process
   (:func:`retrain.steps.dispatch.drain`), so decide, train, validate and promote
   run exactly as on the workers.
3. **Operator.** A simulated operator approves what has waited ``approve_after``
   for approval (the first-week gate), as the demo's does.
4. **Serving.** Rows from ``T`` to the next tick are predicted by the versions
   the aliases name at ``T``: ``production``, or ``canary`` for the rows that
   :func:`retrain.serving.routes_to_canary` sends there by the hash of the
   row's routing key. No model before the first training: no prediction.

Ticks where nothing can happen are skipped (see :func:`replay`): the warm-up, and,
on a slow stream, the hours between two rows. A training takes no simulated time:
its version serves from the next rows on. Ctrl-C (or SIGTERM inside
:func:`retrain.backtest.run.stop_on_sigterm`) stops the loop where it is: the
outcome says ``partial``, and what was replayed is still reported.
"""

from __future__ import annotations

import heapq
import math
import re
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from retrain.backtest.data import ReplayData
from retrain.backtest.policies import PolicySpec, configure
from retrain.backtest.source import VisibleHistory, registered
from retrain.config import ModelConfig, RetrainConfig
from retrain.context import Context
from retrain.core.clock import SimClock, monotonic, utc
from retrain.core.cron import Crontab
from retrain.core.errors import PayloadError

__all__ = ["ReplayOptions", "ReplayOutcome", "replay", "template_database", "timers", "Progress", "OPERATOR"]

OPERATOR = "backtest operator"
_HOURLY = timedelta(hours=1)
_DAILY = timedelta(days=1)
_INITIAL_RETRY = timedelta(hours=1)

# (policy label, fraction done of this policy, simulated time, trainings so far)
Progress = Callable[[str, float, datetime, int], None]


@dataclass(frozen=True)
class ReplayOptions:
    label_delay: timedelta = timedelta(0)
    warmup: timedelta = timedelta(days=1)
    sweep_every: timedelta = timedelta(minutes=5)
    # None: nobody answers, requests waiting for approval wait for ever.
    approve_after: timedelta | None = timedelta(minutes=30)
    period: timedelta = timedelta(days=1)
    # False: run every tick of the grid, even those where nothing can happen (for tests: same results).
    skip_idle: bool = True


@dataclass
class ReplayOutcome:
    """What one replay produced: per-row predictions, and the context whose store holds the rest."""

    spec: PolicySpec
    model: str
    ctx: Context
    config: RetrainConfig
    history: VisibleHistory
    warm_end: datetime
    pred: np.ndarray  # int8, -1 where no model served the row
    served_by: np.ndarray  # object: version string or None
    replayed_until: datetime
    partial: bool = False
    approvals: int = 0
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def template_database(workroot: Path) -> Path:
    """A migrated SQLite file, made once per backtest and copied for each policy."""
    from retrain.storage.db import Database
    from retrain.storage.schema import upgrade

    path = workroot / "template.db"
    if not path.exists():
        db = Database(f"sqlite:///{path.as_posix()}")
        upgrade(db.engine)
        db.engine.dispose()
        con = sqlite3.connect(path)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("PRAGMA journal_mode=DELETE")
        con.close()
    return path


def _context(workdir: Path, template: Path, config: RetrainConfig, clock: SimClock) -> Context:
    from retrain.artifacts import ArtifactStore
    from retrain.settings import Settings
    from retrain.storage.db import Database
    from retrain.storage.repo import Store

    workdir.mkdir(parents=True, exist_ok=True)
    db_path = workdir / "retrain.db"
    shutil.copyfile(template, db_path)
    url = f"sqlite:///{db_path.as_posix()}"
    settings = Settings(home=workdir, database_url=url, broker_url="memory://", artifact_root=workdir / "artifacts")
    # A throwaway store: durability buys nothing here, and fsync is most of a small write's cost.
    artifacts = ArtifactStore(workdir / "artifacts", fsync=lambda fd: None)
    return Context(store=Store(Database(url)), config=config, clock=clock, artifacts=artifacts, settings=settings,
                   worker_id="backtest")


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def _floor(t: float, step: float) -> float:
    return (t // step) * step


class _Serving:
    """The versions the aliases name, with their estimators loaded once per artifact."""

    def __init__(self, ctx: Context, model: str) -> None:
        self.ctx, self.model = ctx, model
        self._estimators: dict[str, Any] = {}
        self._sha: dict[str, str] = {}
        from retrain.serving import routes_to_canary

        self.routes_to_canary = routes_to_canary

    def state(self) -> tuple[str | None, str | None, float]:
        with self.ctx.store.tx() as tx:
            aliases = tx.aliases.all(self.model)
            prod = aliases["production"].version if "production" in aliases else None
            canary_row = aliases.get("canary")
            canary = canary_row.version if canary_row is not None else None
            share = float(canary_row.share_pct or 0.0) if canary_row is not None else 0.0
            for v in (prod, canary):
                if v is not None and v not in self._sha:
                    row = tx.versions.get(self.model, v)
                    assert row is not None, f"alias of {self.model} points at a missing version {v}"
                    self._sha[v] = row.artifact_sha256
        return prod, canary, share

    def estimator(self, version: str):
        sha = self._sha[version]
        est = self._estimators.get(sha)
        if est is None:
            est = self._estimators[sha] = self.ctx.artifacts.load_object(sha)
        return est


class _Writes:
    """Counts the replay database's writes per table (an engine event), so that the loop can tell,
    without a query, whether a step changed anything that matters to what comes next."""

    _SQL = re.compile(r"\s*(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|UPDATE|DELETE\s+FROM)\s+[\"`]?(\w+)", re.IGNORECASE)

    def __init__(self, engine) -> None:
        from sqlalchemy import event

        from retrain.storage.schema import TABLES as T

        self.counts: dict[str, int] = {}
        self.aliases = (T["aliases"],)
        # The loop's state: requests, decisions, runs, rollouts, aliases, versions; every change is audited too.
        self.control = (T["retrain_requests"], T["decisions"], T["training_runs"], T["rollouts"], T["aliases"],
                        T["model_versions"], T["audit_events"])
        # Every transition of the loop is audited (a request, a decision, a training, a stage...); a
        # rollout's evaluation that only counted more rows is not.
        self.audit = (T["audit_events"],)
        # What a drain acts on: messages to run, runs waiting for a slot.
        self.work = (T["outbox"], T["training_runs"], T["training_slots"])
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn, cursor, statement, parameters, context, executemany) -> None:
        m = self._SQL.match(statement)
        if m:
            table = m.group(1).lower()
            self.counts[table] = self.counts.get(table, 0) + 1

    def of(self, tables: tuple[str, ...]) -> int:
        return sum(self.counts.get(t, 0) for t in tables)


_UNITS_S = (("_seconds", 1.0), ("_s", 1.0), ("_minutes", 60.0), ("_hours", 3600.0), ("_days", 86400.0))


def timers(cfg: ModelConfig) -> list[float]:
    """Every duration of the model's settings (``*_minutes``, ``*_hours``, ``*_days``, ``*_s``), in seconds,
    leaving out the sections this policy has switched off.

    A state change at ``T`` (a training, a decision, a stage) can make a step act again at ``T``
    plus one of these (a shadow's minimum or maximum, a stage's, a refire delay, a drift
    check's interval...), with no new data in between: the replay wakes up then.
    """
    body = cfg.model_dump(mode="json")
    off = set()
    if not cfg.thresholds.metrics:
        off.add("thresholds")
    for section in ("drift", "emergency", "rollout"):
        if not body.get(section, {}).get("enabled", True):
            off.add(section)
    out: set[float] = set()

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if path == "" and k in off:
                    continue
                if path == "validation" and k.startswith("shadow_") and not cfg.validation.shadow_enabled:
                    continue
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and node > 0:
            for suffix, unit in _UNITS_S:
                if path.endswith(suffix):
                    out.add(float(node) * unit)
                    break

    walk(body, "")
    return sorted(out)


def replay(data: ReplayData, base: RetrainConfig, model: str, spec: PolicySpec, opts: ReplayOptions,
           workdir: Path, template: Path, progress: Progress | None = None) -> ReplayOutcome:
    """Replay ``data`` under ``spec``; the returned outcome's context still holds the store.

    Ticks lie on the grid ``t0 + k * sweep_every``. A tick where nothing can happen is
    skipped: nothing runs before the warm-up's end, and after it a tick runs when labels
    become visible (while a trigger watches them or a run, request or rollout is in
    flight), when beat or the operator has something due (the first training, an
    ``every:`` period, a schedule entry, an approval), when a deferred request is due, or
    at a duration of the model's settings (:func:`timers`) after a tick that changed the
    loop's state. A skipped tick would have run the same steps on the same state: no new
    outcome, nothing due. The one difference: a trigger's window keeps its old outcomes
    until the next tick that runs (the windows slide with the data, not between rows).
    """

    from retrain.core.payloads import IngestBatch
    from retrain.steps.dispatch import STEPS, drain, run_step
    from retrain.steps.ingest import ingest
    from retrain.steps.requests import slot_key, sync_models
    from retrain.tasks import DECIDE, EVALUATE_ROLLOUTS, RECONCILE, REQUEST_RETRAINING, RETENTION, SWEEP

    tick = opts.sweep_every.total_seconds()
    delay = opts.label_delay.total_seconds()
    ts = data.ts
    n = len(data)
    t0 = _floor(float(ts[0]), tick)
    warm_end_s = float(ts[0]) + opts.warmup.total_seconds()
    t_end = _floor(float(ts[-1]) + delay, tick) + tick
    clock = SimClock(_dt(t0))
    history = VisibleHistory(data, opts.label_delay)
    pred = np.full(n, -1, dtype=np.int8)
    served_by = np.full(n, None, dtype=object)

    def on_grid(t: float) -> float:
        """The first tick at or after ``t``."""
        return t0 + math.ceil((t - t0) / tick - 1e-9) * tick

    with registered(history) as token:
        config = configure(base, model, spec, token)
        ctx = _context(workdir, template, config, clock)
        writes = _Writes(ctx.store.db.engine)
        cfg = config.model(model)
        out = ReplayOutcome(spec, model, ctx, config, history, _dt(warm_end_s), pred, served_by, _dt(t0))
        sync_models(ctx)
        serving = _Serving(ctx, model)
        crons = {slot: Crontab.from_fields(fields, config.settings.timezone)
                 for slot, fields in cfg.schedule.crontab_fields().items()}
        wait_for = [d for d in timers(cfg) if d < t_end - t0]
        started = monotonic()
        # Nothing runs before the warm-up is over (no model, nothing to watch): start there.
        T = max(t0, on_grid(warm_end_s))
        served = reported = int(np.searchsorted(ts, T, side="left"))  # rows before T: no model served them
        initial_at: float | None = None
        every_s = spec.period.total_seconds() if spec.kind == "every" and spec.period is not None else None
        next_every = warm_end_s + every_s if every_s is not None else None
        last_reconcile = last_housekeeping = t0
        last_retention: float | None = None
        retention_seen = -1
        # Retention's cost grows with every version ever made (tombstones included) and all it does
        # is delete old versions: every max_age_days at most (and once at the end), not hourly.
        retention_every = max(_DAILY.total_seconds(), cfg.retention.max_age_days * 86400.0)
        watching = bool(cfg.thresholds.metrics) or cfg.drift.enabled or cfg.emergency.enabled
        has_rollouts: bool | None = None
        trainings = 0
        last_pct = -1
        wakeups: list[float] = []  # heap of tick times some timer may act at
        state_seen = -1  # control writes when `busy` and `deferred_at` were last read
        busy, deferred_at = False, None
        aliases_seen = -1
        prod = canary = None
        share = 0.0

        has_model = False
        # Requests waiting for approval, by id, with the time they started waiting.
        pending: dict[str, datetime] = {}

        def on_result(task: str, result: Any) -> None:
            if task == DECIDE and getattr(result, "verdict", None) == "pending_approval":
                pending.setdefault(result.request_id, clock.now())

        def step(task: str, payload: dict) -> None:
            before = writes.of(writes.work)
            run_step(ctx, task, payload)
            # Nothing enqueued and no run moved: the drain would find nothing to do.
            if writes.of(writes.work) != before:
                drain(ctx, on_result=on_result)

        def request(reason: str, trigger: str, **extra) -> None:
            step(REQUEST_RETRAINING, {"v": 1, "model": model, "reason": reason, "trigger": trigger,
                                      "requested_by": "backtest", **extra})

        def control_state() -> tuple[bool, float | None]:
            """Is a request, a run or a rollout in flight; when is the next deferred request due?"""
            nonlocal state_seen, busy, deferred_at
            seen = writes.of(writes.control)
            if seen != state_seen:
                with ctx.store.tx() as tx:
                    open_requests = tx.requests.open_count(model)
                    # Whatever retrain.evaluate_rollouts would evaluate counts too (a rollout outliving its run).
                    busy = (bool(open_requests) or tx.runs.active(model) is not None
                            or bool(tx.rollouts.active(model)))
                    due = tx.requests.next_deferred(model)
                deferred_at = None if due is None else utc(due).timestamp()
                state_seen = writes.of(writes.control)
            return busy, deferred_at

        def next_tick(T: float) -> float:
            """The next tick where something can happen (see the docstring)."""
            if not opts.skip_idle:
                return T + tick
            in_flight, deferred = control_state()
            due = [t_end]
            if reported < n and (watching or in_flight):
                due.append(float(ts[reported]) + delay)
            if not has_model and initial_at is not None:
                due.append(initial_at + _INITIAL_RETRY.total_seconds())
            if next_every is not None:
                due.append(next_every)
            for cron in crons.values():
                at = cron.next_after(_dt(T))
                if at is not None:
                    due.append(at.timestamp())
            if opts.approve_after is not None and pending:
                due.append(min(pending.values()).timestamp() + opts.approve_after.total_seconds())
            if deferred is not None:
                due.append(deferred)
            while wakeups and wakeups[0] <= T:
                heapq.heappop(wakeups)
            if wakeups:
                due.append(wakeups[0])
            return max(T + tick, on_grid(min(due)))

        last_T = T - tick
        try:
            while T < t_end:
                now = _dt(T)
                clock.set(now)
                audited = writes.of(writes.audit)
                # 1. outcomes whose labels are visible by now
                upto = int(np.searchsorted(ts, T - delay, side="right"))
                upto = min(upto, served)
                ingested = upto > reported
                if upto > reported:
                    idx = np.arange(reported, upto)
                    idx = idx[pred[idx] >= 0]
                    for lo in range(0, len(idx), 20_000):
                        part = idx[lo:lo + 20_000]
                        batch = IngestBatch(
                            batch_id=f"backtest-{int(T)}-{lo}", model=model,
                            id=[str(i) for i in part.tolist()],
                            version=served_by[part].tolist(), ts=ts[part].tolist(), x=data.X[part].tolist(),
                            prediction=pred[part].tolist(), label=data.y[part].tolist(),
                            ret=data.ret[part].tolist() if data.ret is not None else [None] * len(part))
                        ingest(ctx, batch)
                    reported = upto
                # 2. beat (T is past the warm-up's end)
                if not has_model and (initial_at is None or T - initial_at >= _INITIAL_RETRY.total_seconds()):
                    initial_at = T
                    request("initial model: trained on the warm-up", "manual", approved_by=OPERATOR)
                if next_every is not None and every_s is not None and T >= next_every:
                    while next_every <= T:
                        next_every += every_s
                    request(f"fixed schedule ({spec.label})", "schedule", slot=f"{spec.label}@{now:%Y-%m-%dT%H:%M}",
                            approved_by=OPERATOR, override_budget=True,
                            override_reason=f"backtest baseline: retrain {spec.label}, subject to nothing else")
                for slot, cron in crons.items():
                    for at in cron.fired(_dt(last_T), now):
                        # Keyed by the instant the entry fired, as beat keys it, not by the tick's time.
                        request(f"scheduled {slot} retraining", "schedule",
                                slot=slot_key(slot, at, config.settings.timezone))
                in_flight, deferred = control_state()
                # With every trigger off the sweep has only housekeeping left (deferred requests, the
                # sample's bound): when a request is due, hourly while rows come in, daily otherwise.
                since = T - last_housekeeping
                if (watching or (deferred is not None and deferred <= T) or since >= _DAILY.total_seconds()
                        or (ingested and since >= _HOURLY.total_seconds())):
                    last_housekeeping = T
                    step(SWEEP, {"v": 1})
                    in_flight, deferred = control_state()
                if has_rollouts is None:
                    has_rollouts = EVALUATE_ROLLOUTS in STEPS
                if has_rollouts and in_flight:  # nothing in flight: no rollout to evaluate
                    try:
                        step(EVALUATE_ROLLOUTS, {"v": 1})
                    except PayloadError as exc:  # a payload contract we do not know yet: say so, go on
                        has_rollouts = False
                        out.notes.append(f"retrain.evaluate_rollouts refused {{'v': 1}}: {exc}; not run")
                # Housekeeping: the reconciler finds lost messages and expired leases, which an in-process
                # replay never has while nothing is in flight; retention only deletes old versions.
                if in_flight and T - last_reconcile >= _HOURLY.total_seconds():
                    last_reconcile = T
                    step(RECONCILE, {"v": 1})
                if RETENTION in STEPS and writes.of(writes.control) != retention_seen and (
                        last_retention is None or T - last_retention >= retention_every):
                    last_retention = T
                    step(RETENTION, {"v": 1})
                    retention_seen = writes.of(writes.control)
                # 3. the operator
                if opts.approve_after is not None and pending:
                    due = [rid for rid, at in pending.items() if at <= now - opts.approve_after]
                    for rid in due:
                        del pending[rid]
                    out.approvals += _approve(ctx, due, on_result)
                # A transition: the model's timers may act on it later, with no new data.
                if writes.of(writes.audit) != audited:
                    for d in wait_for:
                        heapq.heappush(wakeups, on_grid(T + d))
                # 4. serve the rows until the next tick with the versions in place now
                if writes.of(writes.aliases) != aliases_seen:
                    aliases_seen = writes.of(writes.aliases)
                    prod, canary, share = serving.state()
                has_model = prod is not None
                T_next = min(next_tick(T), t_end)
                hi = int(np.searchsorted(ts, T_next, side="left"))
                if hi > served:
                    if prod is not None:
                        _predict(data, serving, served, hi, prod, canary, share, pred, served_by)
                    served = hi
                last_T, T = T, T_next
                out.replayed_until = _dt(min(T, t_end))
                pct = int(100 * (T - t0) / (t_end - t0))
                if progress is not None and pct != last_pct:
                    last_pct = pct
                    with ctx.store.tx() as tx:
                        trainings = len(tx.versions.all(model))
                    progress(spec.label, min(1.0, (T - t0) / (t_end - t0)), out.replayed_until, trainings)
            # Retention's last pass, so that the versions end as hourly passes would have left them.
            if RETENTION in STEPS and writes.of(writes.control) != retention_seen:
                step(RETENTION, {"v": 1})
        except KeyboardInterrupt:
            out.partial = True
        out.elapsed_s = monotonic() - started
    return out


def _predict(data: ReplayData, serving: _Serving, lo: int, hi: int, prod: str, canary: str | None, share: float,
             pred: np.ndarray, served_by: np.ndarray) -> None:
    X = data.X[lo:hi]
    to_canary = np.zeros(hi - lo, dtype=bool)
    if canary is not None and canary != prod and share > 0 and serving.routes_to_canary is not None:
        route = serving.routes_to_canary
        to_canary = np.fromiter((route(data.key(i), share) for i in range(lo, hi)), dtype=bool, count=hi - lo)
    for version, mask in ((prod, ~to_canary), (canary, to_canary)):
        if version is None or not mask.any():
            continue
        pred[lo:hi][mask] = np.asarray(serving.estimator(version).predict(X[mask])).astype(np.int8)
        served_by[lo:hi][mask] = version


def _approve(ctx: Context, request_ids: list[str], on_result) -> int:
    """The simulated operator approves these requests (those still waiting), as the demo's operator does."""
    from retrain.core.errors import PayloadError as _NotWaiting
    from retrain.steps.decide import resolve_pending
    from retrain.steps.dispatch import drain

    done = 0
    for rid in request_ids:
        try:
            resolve_pending(ctx, rid, approve=True, actor=OPERATOR,
                            reason="simulated operator: approves after the configured wait")
            done += 1
        except _NotWaiting:  # decided otherwise meanwhile (superseded, rejected): nothing to approve
            continue
    if done:
        drain(ctx, on_result=on_result)
    return done
