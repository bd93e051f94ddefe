"""The replay driver: one policy over the rows, on a simulated clock, through the workers' own steps.

Per tick of ``sweep_every`` simulated time, at tick time ``T`` (the clock reads ``T``):

1. **Outcomes.** Rows predicted earlier whose label is visible (``ts + label_delay
   <= T``) are reported through :func:`retrain.steps.ingest.ingest`, one
   :class:`~retrain.payloads.IngestBatch` per tick, under the version that
   served them: metric buckets per version, the feature sample.
2. **Beat.** What ``celeryconfig.beat_schedule`` would have fired by ``T``: the
   first training once the warm-up is over, the model's schedule entries
   (:mod:`retrain.backtest.cron`, slot keys by
   :func:`retrain.steps.requests.slot_key`), the fixed period of an
   ``every:`` policy, ``retrain.sweep``, ``retrain.evaluate_rollouts`` when that
   step exists, and ``retrain.reconcile`` and ``retrain.retention`` hourly. After each, the outbox is
   drained in-process (:func:`retrain.steps.dispatch.drain`), so decide,
   train, validate and promote run exactly as on the workers.
3. **Operator.** A simulated operator approves what has waited ``approve_after``
   for approval (the first-week gate), as the demo's does.
4. **Serving.** Rows with ``T <= ts < T + tick`` are predicted by the versions
   the aliases name at ``T``: ``production``, or ``canary`` for the rows that
   :func:`retrain.serving.routes_to_canary` sends there by the hash of the
   row's routing key. No model before the first training: no prediction.

A training takes no simulated time: its version serves from the next rows on.
Ctrl-C stops the loop between steps; what was replayed is still reported.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from retrain.backtest.cron import Crontab
from retrain.backtest.data import ReplayData
from retrain.backtest.policies import PolicySpec, configure
from retrain.backtest.source import VisibleHistory, registered
from retrain.clock import SimClock, monotonic
from retrain.config import RetrainConfig
from retrain.context import Context
from retrain.errors import PayloadError

__all__ = ["ReplayOptions", "ReplayOutcome", "replay", "template_database", "Progress", "OPERATOR"]

OPERATOR = "backtest operator"
_HOURLY = timedelta(hours=1)
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
        try:
            from retrain.serving import routes_to_canary  # type: ignore[attr-defined]
        except ImportError:  # staged rollout not in this build: production serves every row
            routes_to_canary = None
        self.routes_to_canary = routes_to_canary

    def state(self) -> tuple[str | None, str | None, float]:
        with self.ctx.store.tx() as tx:
            aliases = tx.aliases(self.model)
            prod = aliases["production"].version if "production" in aliases else None
            canary_row = aliases.get("canary")
            canary = canary_row.version if canary_row is not None else None
            share = float(canary_row.share_pct or 0.0) if canary_row is not None else 0.0
            for v in (prod, canary):
                if v is not None and v not in self._sha:
                    self._sha[v] = tx.version(self.model, v).artifact_sha256
        return prod, canary, share

    def estimator(self, version: str):
        sha = self._sha[version]
        est = self._estimators.get(sha)
        if est is None:
            est = self._estimators[sha] = self.ctx.artifacts.load_object(sha)
        return est


def replay(data: ReplayData, base: RetrainConfig, model: str, spec: PolicySpec, opts: ReplayOptions,
           workdir: Path, template: Path, progress: Progress | None = None) -> ReplayOutcome:
    """Replay ``data`` under ``spec``; the returned outcome's context still holds the store."""
    from retrain.payloads import IngestBatch
    from retrain.steps.dispatch import STEPS, drain, run_step
    from retrain.steps.ingest import ingest
    from retrain.steps.requests import slot_key, sync_models

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

    with registered(history) as token:
        config = configure(base, model, spec, token)
        ctx = _context(workdir, template, config, clock)
        cfg = config.model(model)
        out = ReplayOutcome(spec, model, ctx, config, history, _dt(warm_end_s), pred, served_by, _dt(t0))
        sync_models(ctx)
        serving = _Serving(ctx, model)
        crons = {slot: Crontab.from_fields(fields, config.settings.timezone)
                 for slot, fields in cfg.schedule.crontab_fields().items()}
        started = monotonic()
        served = reported = 0  # rows [0, served) predicted; [0, reported) reported if predicted
        initial_at: float | None = None
        next_every = warm_end_s + spec.period.total_seconds() if spec.kind == "every" else None
        last_reconcile = last_housekeeping = t0
        watching = bool(cfg.thresholds.metrics) or cfg.drift.enabled or cfg.emergency.enabled
        has_rollouts: bool | None = None
        trainings = 0
        last_pct = -1

        has_model = False
        # Requests waiting for approval, by id, with the time they started waiting.
        pending: dict[str, datetime] = {}

        def on_result(task: str, result: Any) -> None:
            if task == "retrain.decide" and getattr(result, "verdict", None) == "pending_approval":
                pending.setdefault(result.request_id, clock.now())

        def step(task: str, payload: dict) -> None:
            run_step(ctx, task, payload)
            drain(ctx, on_result=on_result)

        def request(reason: str, trigger: str, **extra) -> None:
            step("retrain.request_retraining", {"v": 1, "model": model, "reason": reason, "trigger": trigger,
                                                "requested_by": "backtest", **extra})

        T = t0
        try:
            while T < t_end:
                now = _dt(T)
                clock.set(now)
                # 1. outcomes whose labels are visible by now
                upto = int(np.searchsorted(ts, T - delay, side="right"))
                upto = min(upto, served)
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
                # 2. beat: nothing runs before the warm-up is over (no model, nothing to watch)
                if T >= warm_end_s:
                    if not has_model and (initial_at is None or T - initial_at >= _INITIAL_RETRY.total_seconds()):
                        initial_at = T
                        request("initial model: trained on the warm-up", "manual", approved_by=OPERATOR)
                    if next_every is not None and T >= next_every:
                        while next_every <= T:
                            next_every += spec.period.total_seconds()
                        request(f"fixed schedule ({spec.label})", "schedule", slot=f"{spec.label}@{now:%Y-%m-%dT%H:%M}",
                                approved_by=OPERATOR, override_budget=True,
                                override_reason=f"backtest baseline: retrain {spec.label}, subject to nothing else")
                    for slot, cron in crons.items():
                        for at in cron.fired(_dt(T - tick), now):
                            # Keyed by the instant the entry fired, as beat keys it, not by the tick's time.
                            request(f"scheduled {slot} retraining", "schedule",
                                    slot=slot_key(slot, at, config.settings.timezone))
                    # With every trigger off the sweep has only housekeeping left (deferred requests, the
                    # sample's bound): hourly is enough, and it is most of a tick's cost.
                    if watching or T - last_housekeeping >= _HOURLY.total_seconds():
                        last_housekeeping = T
                        step("retrain.sweep", {"v": 1})
                    if has_rollouts is None:
                        has_rollouts = "retrain.evaluate_rollouts" in STEPS
                    if has_rollouts:
                        try:
                            step("retrain.evaluate_rollouts", {"v": 1})
                        except PayloadError as exc:  # a payload contract we do not know yet: say so, go on
                            has_rollouts = False
                            out.notes.append(f"retrain.evaluate_rollouts refused {{'v': 1}}: {exc}; not run")
                    if T - last_reconcile >= _HOURLY.total_seconds():
                        last_reconcile = T
                        step("retrain.reconcile", {"v": 1})
                        if "retrain.retention" in STEPS:
                            step("retrain.retention", {"v": 1})
                # 3. the operator
                if opts.approve_after is not None and pending:
                    due = [rid for rid, at in pending.items() if at <= now - opts.approve_after]
                    for rid in due:
                        del pending[rid]
                    out.approvals += _approve(ctx, due, on_result)
                # 4. serve the rows of this tick with the versions in place now
                prod, canary, share = serving.state()
                has_model = prod is not None
                hi = int(np.searchsorted(ts, T + tick, side="left"))
                if hi > served:
                    if prod is not None:
                        _predict(data, serving, served, hi, prod, canary, share, pred, served_by)
                    served = hi
                T += tick
                out.replayed_until = _dt(min(T, t_end))
                pct = int(100 * (T - t0) / (t_end - t0))
                if progress is not None and pct != last_pct:
                    last_pct = pct
                    with ctx.store.tx() as tx:
                        trainings = len(tx.versions(model))
                    progress(spec.label, min(1.0, (T - t0) / (t_end - t0)), out.replayed_until, trainings)
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
    from retrain.errors import PayloadError as _NotWaiting
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
