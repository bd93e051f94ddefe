"""Train: claim the run under a lease, fit the model's own entry point on its data source,
store the artifact and register the next semantic version.

The attempt counter is committed before any work starts and doubles as a fencing
token: the version is registered only if this attempt still holds the lease, so a
stale duplicate (a redelivered message, a worker that came back) has no effect.

A claim also needs one of the global training slots (retrain.slots) and no
unfinished run of a model this one depends on (retrain.waiting); otherwise the run
stays queued with ``blocked_on`` saying what it waits for, and is woken when that
is over. A heartbeat renews the run's lease and its slot's while the model's own
code runs, and moves the progress along. An attempt that fails in the model's own
code is retried until ``RETRAIN_MAX_ATTEMPTS`` are used, then the run is ``dead``
with the reason.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from retrain import slots
from retrain.config import ModelConfig, resolve_callable
from retrain.context import Context
from retrain.core import lifecycle
from retrain.core.clock import monotonic
from retrain.core.costs import CostRates, Opportunity, ResourceMeter, price
from retrain.core.errors import ConfigError, StaleLeaseError, TrainingError, TransientError
from retrain.core.evidence import independent_rows_needed, paired_rows_needed, plan_gate, walk_forward_folds
from retrain.core.policy import serving_rate
from retrain.core.ports import UnitOfWork
from retrain.core.versioning import VersionSpec, fingerprint_array
from retrain.registry import NewVersion, register_version, versions_lock
from retrain.slots import SLOT_LOCK
from retrain.tasks import TRAIN, VALIDATE
from retrain.waiting import dependency_blocker, describe_dependency, slot_wait, wake

__all__ = ["TrainResult", "TrainingData", "train_run", "fail_run", "load_training_data", "load_training_rows",
           "SLOT_LOCK"]

REFERENCE_ROWS = 5000

# Runs this process is fitting right now (several under a threads pool): a live lease
# owned by this process for a run not in here belongs to an attempt that is gone.
_ACTIVE_RUNS: set[str] = set()

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    status: str  # registered | skipped | busy | blocked | failed | retrying | dead
    version: str | None = None
    detail: str = ""


def _git_commit(entry_point: str) -> str | None:
    module = entry_point.split(":")[0].split(".")[0]
    try:
        file = __import__(module).__file__
        if file is None:  # a namespace package: nowhere to ask git
            return None
        spec_path = Path(file).resolve().parent
        out = subprocess.run(["git", "-C", str(spec_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except Exception:  # no git, not a checkout: the commit is optional metadata
        return None


@dataclass(frozen=True)
class TrainingData:
    """Labelled rows in time order: features, labels, epoch seconds and, when the data
    source gives them, each row's market return (NaN where one is missing)."""

    X: np.ndarray
    y: np.ndarray
    ts: np.ndarray
    ret: np.ndarray | None = None


def load_training_rows(ctx: Context, cfg: ModelConfig, now: datetime) -> TrainingData:
    """The model's data source at ``now``, in time order, only what is visible then.

    A data source returns ``(X, y, ts)`` or ``(X, y, ts, ret)``: ``ret`` is each row's
    market return, from which holdout scoring computes the strategy's Sharpe ratio
    (:func:`retrain.core.windows.strategy_returns`). ``"sample"`` reads the returns the
    trading app reported with its outcomes. No return at all (or only missing ones)
    is ``ret=None``.
    """
    lookback = timedelta(hours=cfg.lookback_hours)
    field = f"models.{cfg.name}.data_source"
    if cfg.data_source == "sample":
        with ctx.store.tx() as tx:
            rows = tx.monitoring.samples(cfg.name, since=now - lookback, until=now)
        X = np.asarray([r.features for r in rows], dtype=np.float64).reshape(-1, cfg.n_features)
        y = np.asarray([r.label for r in rows], dtype=np.int64)
        ts = np.asarray([r.ts.timestamp() for r in rows], dtype=np.float64)
        ret: np.ndarray | None = np.asarray([np.nan if r.ret is None else r.ret for r in rows], dtype=np.float64)
        return TrainingData(X, y, ts, _returns(ret, len(y), field))
    source = resolve_callable(cfg.data_source, field)
    out = source(now, lookback, dict(cfg.params))
    if not isinstance(out, (tuple, list)) or len(out) not in (3, 4):
        what = f"{len(out)} values" if isinstance(out, (tuple, list)) else type(out).__name__
        raise TrainingError(f"{field}: {cfg.data_source} returned {what}; expected (X, y, ts) or (X, y, ts, ret)")
    X, y, ts = np.asarray(out[0], dtype=np.float64), np.asarray(out[1]), np.asarray(out[2], dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != cfg.n_features:
        raise TrainingError(f"data source {cfg.data_source} returned shape {X.shape}; expected (n, {cfg.n_features})")
    ret = _returns(out[3], len(y), field) if len(out) == 4 and out[3] is not None else None
    order = np.argsort(ts, kind="stable")
    return TrainingData(X[order], y[order], ts[order], None if ret is None else ret[order])


def _returns(ret, n: int, field: str) -> np.ndarray | None:
    try:
        r = np.asarray(ret, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TrainingError(f"{field}: the returns column (4th value) is not numeric") from None
    if r.shape != (n,):
        raise TrainingError(f"{field}: {r.size} returns for {n} rows")
    return None if not np.isfinite(r).any() else r


def load_training_data(ctx: Context, cfg: ModelConfig, now: datetime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, ts) in time order from the model's data source, only what is visible at ``now``."""
    d = load_training_rows(ctx, cfg, now)
    return d.X, d.y, d.ts


def _needs_returns(cfg: ModelConfig, data: TrainingData) -> None:
    """A Sharpe ratio is made of returns: refuse, before any fit, a run that could not be validated."""
    if cfg.primary_metric == "sharpe" and data.ret is None:
        raise TrainingError(
            f"models.{cfg.name}.primary_metric = 'sharpe' needs returns, and the data source "
            f"{cfg.data_source!r} gave none: return (X, y, ts, ret) from it (ret: each row's market return), "
            f"or choose accuracy, precision, recall or f1")


def _deps(ctx: Context) -> dict[str, tuple[str, ...]]:
    return {name: tuple(m.depends_on) for name, m in ctx.config.models.items()}


def _end(tx: UnitOfWork, ctx: Context, run, state: str, reason: str, now: datetime, actor: str = "system", *,
         attempt: int | None = None, owner: str | None = None) -> bool:
    """End the run (retrain.core.lifecycle.finish) and hand what it freed to the runs that wait."""
    if not lifecycle.finish(tx, run, state, reason, now, actor=actor, attempt=attempt, owner=owner):
        return False
    wake(tx, depends_on=_deps(ctx), limit=ctx.settings.training_slots, now=now)
    return True


def _hold(tx: UnitOfWork, run, reason: str, now: datetime) -> None:
    """Keep the run queued, saying what it waits for: Postgres remembers it, not the broker."""
    if run.blocked_on != reason:
        tx.audit.record(now, "run", "orchestrator", f"run of {run.model} waits for {reason}", model=run.model,
                        subject=run.id, data={"blocked_on": reason})
    lifecycle.hold(tx, run, reason)  # an attempt whose lease expired goes back in line


def _claim(ctx: Context, run_id: str, now: datetime) -> tuple[str, int | None, str]:
    """Take the run's lease and a training slot. Returns (status, attempt, detail)."""
    s = ctx.settings
    lease_until = now + timedelta(seconds=s.lease_s)
    with ctx.store.tx() as tx:
        if not tx.pg:
            tx.lock(SLOT_LOCK)  # SQLite has no row locks: claims go one at a time
        run = tx.runs.get(run_id, for_update=True)
        if run is None:
            return "skipped", None, "unknown run"
        if run.state not in ("queued", "training"):
            return "skipped", None, f"run is {run.state}"
        if run.state == "training" and run.lease_expires_at and run.lease_expires_at > now:
            # A live lease means a duplicate message, unless this very process holds it and no
            # longer runs it (a Celery retry after a transient error): then it takes it over.
            if run.lease_owner != ctx.worker_id or run_id in _ACTIVE_RUNS:
                return "skipped", None, f"run is held by {run.lease_owner} until {run.lease_expires_at.isoformat()}"
        if run.attempt >= s.max_attempts:
            reason = (f"gave up after {run.attempt} of {s.max_attempts} attempts (RETRAIN_MAX_ATTEMPTS)"
                      + (f"; last: {run.error}" if run.error else ""))
            _end(tx, ctx, run, "dead", reason, now)
            return "dead", None, reason
        cfg = ctx.config.models.get(run.model)
        if cfg is None:
            reason = f"model {run.model!r} is no longer in the model file"
            _end(tx, ctx, run, "failed", reason, now)
            return "failed", None, reason
        blocker = dependency_blocker(tx, run, cfg.depends_on)
        if blocker is not None:
            waits_for = describe_dependency(blocker)
            _hold(tx, run, waits_for, now)  # which sets run.blocked_on to it
            return "blocked", None, waits_for
        slot = slots.claim(tx, run_id=run.id, attempt=run.attempt + 1, owner=ctx.worker_id,
                           limit=s.training_slots, now=now, lease_until=lease_until)
        if slot is None:
            waits_for = slot_wait(s.training_slots)
            _hold(tx, run, waits_for, now)
            return "busy", None, waits_for
        run = lifecycle.start_training(tx, run, owner=ctx.worker_id, now=now, lease_until=lease_until)
        tx.audit.record(now, "training", ctx.worker_id,
                        f"training of {run.model} started (attempt {run.attempt} of {s.max_attempts}, slot {slot})",
                        model=run.model, subject=run.id, data={"attempt": run.attempt, "slot": slot})
        return "claimed", run.attempt, ""


def _renew(tx: UnitOfWork, ctx: Context, run_id: str, attempt: int):
    """Extend this attempt's lease, on the run and on its slot; None if the attempt lost it."""
    run = tx.runs.get(run_id, for_update=True)
    if run is None or run.attempt != attempt or run.lease_owner != ctx.worker_id or run.state != "training":
        return None
    now = ctx.now()
    until = now + timedelta(seconds=ctx.settings.lease_s)
    run = tx.runs.note(run, lease_expires_at=until, heartbeat_at=now)
    if not slots.renew(tx, run_id, attempt, until):
        # The slot's lease ran out (the database was out of reach longer than a lease) and
        # may have gone to another run: take a free one back if there is one.
        slots.claim(tx, run_id=run_id, attempt=attempt, owner=ctx.worker_id, limit=ctx.settings.training_slots,
                    now=now, lease_until=until)
    return run


def _report(progress: Progress | None, stage: str, pct: float) -> None:
    if progress is None:
        return
    try:
        progress(stage, pct)
    except Exception:  # progress is for people watching; it must never fail a training
        pass


def _set_progress(ctx: Context, run_id: str, attempt: int, stage: str, pct: float, progress: Progress | None) -> None:
    """Record the stage on the run (renewing the lease); stop at once if this attempt lost it."""
    with ctx.store.tx() as tx:
        run = _renew(tx, ctx, run_id, attempt)
        if run is None:
            raise StaleLeaseError(f"run {run_id} attempt {attempt} lost its lease before '{stage}'; stopped")
        lifecycle.progress(tx, run, stage, pct, attempt=attempt)
    _report(progress, stage, pct)


def _expected_fit_s(tx: UnitOfWork, model: str) -> float | None:
    """The median fit time of the model's last runs: the yardstick of the fitting progress."""
    walls = [float(r.usage["wall_seconds"]) for r in tx.runs.newest(model, limit=10)
             if r.usage and r.usage.get("wall_seconds")]
    return statistics.median(walls[:5]) if walls else None


class _Heartbeat:
    """Renews the lease (run and slot) while the model's own code runs, so a long fit keeps
    its slot, and moves the fitting progress along against the model's usual fit time."""

    def __init__(self, ctx: Context, run_id: str, attempt: int, progress: Progress | None = None,
                 expected_s: float | None = None) -> None:
        self.ctx, self.run_id, self.attempt = ctx, run_id, attempt
        self.progress, self.expected_s = progress, expected_s
        self.lost = False
        self._fit_started: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{run_id[:8]}", daemon=True)

    def fitting(self) -> None:
        self._fit_started = monotonic()

    def fitted(self) -> None:
        self._fit_started = None

    def _fit_pct(self) -> float | None:
        if self._fit_started is None:
            return None
        elapsed = monotonic() - self._fit_started
        frac = min(0.95, elapsed / self.expected_s) if self.expected_s else 1 - math.exp(-elapsed / 120.0)
        return round(0.3 + 0.5 * frac, 3)

    def _loop(self) -> None:
        every = max(0.5, self.ctx.settings.lease_s / 3)
        while not self._stop.wait(every):
            try:
                pct = self._fit_pct()
                with self.ctx.store.tx() as tx:
                    run = _renew(tx, self.ctx, self.run_id, self.attempt)
                    if run is None:
                        self.lost = True  # the registration's fencing check will refuse this attempt
                        return
                    if pct is not None:
                        tx.runs.note(run, progress=pct)
                if pct is not None:
                    _report(self.progress, "fitting", pct)
            except Exception:  # a missed renewal is retried next beat; the lease covers three
                continue

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def _release_slot(ctx: Context, run_id: str, attempt: int) -> None:
    """The fit is over: give the slot back and wake the best waiting run."""
    with ctx.store.tx() as tx:
        if slots.release(tx, run_id, attempt):
            wake(tx, depends_on=_deps(ctx), limit=ctx.settings.training_slots, now=ctx.now())


def _retry_or_die(ctx: Context, run_id: str, attempt: int, error: str) -> TrainResult:
    """The model's own code failed on this attempt: queue the run again, or end it ``dead``
    once its attempts are used up, with the error as the reason."""
    now = ctx.now()
    with ctx.store.tx() as tx:
        run = tx.runs.get(run_id, for_update=True)
        if run is None or run.attempt != attempt or run.state != "training":
            return TrainResult(run_id, "skipped", detail=f"attempt {attempt} was superseded; its error: {error}")
        if attempt >= ctx.settings.max_attempts:
            reason = f"attempt {attempt} of {ctx.settings.max_attempts} failed: {error}"
            _end(tx, ctx, run, "dead", reason, now)
            return TrainResult(run_id, "dead", detail=reason)
        lifecycle.requeue(tx, run, attempt=attempt, reason=f"attempt {attempt} failed: {error}", now=now)
        slots.release(tx, run_id, attempt)
        tx.audit.record(now, "run", ctx.worker_id, f"attempt {attempt} of {run.model} failed, retrying: {error}",
                        model=run.model, subject=run.id, data={"attempt": attempt, "error": error})
        tx.outbox.enqueue(TRAIN, {"v": 1, "run_id": run_id}, now, priority=run.priority)
        wake(tx, depends_on=_deps(ctx), limit=ctx.settings.training_slots, now=now)
    return TrainResult(run_id, "retrying", detail=error)


def train_run(ctx: Context, run_id: str, progress: Progress | None = None, *,
              passthrough: tuple[type[BaseException], ...] = ()) -> TrainResult:
    """Claim the run and train it. ``passthrough`` are exceptions the caller uses to stop
    the work (a worker's soft time limit): they leave untouched, for the caller to handle."""
    now = ctx.now()
    status, attempt, detail = _claim(ctx, run_id, now)
    if status != "claimed":
        return TrainResult(run_id, status, detail=detail)
    assert attempt is not None
    _ACTIVE_RUNS.add(run_id)
    try:
        return _train_claimed(ctx, run_id, attempt, now, progress, passthrough)
    finally:
        _ACTIVE_RUNS.discard(run_id)


def _train_claimed(ctx: Context, run_id: str, attempt: int, now: datetime, progress: Progress | None,
                   passthrough: tuple[type[BaseException], ...]) -> TrainResult:
    with ctx.store.tx() as tx:
        run = tx.runs.get(run_id)
        assert run is not None  # claimed by the caller
        cfg = ctx.config.model(run.model)
        expected = _expected_fit_s(tx, cfg.name)
    _report(progress, "loading data", 0.05)
    reraised: tuple[type[BaseException], ...] = (StaleLeaseError, TransientError, *passthrough)
    try:
        with _Heartbeat(ctx, run_id, attempt, progress, expected) as beat:
            data = load_training_rows(ctx, cfg, now)
            X, y, ts = data.X, data.y, data.ts
            if len(y) < 50 or len(np.unique(y)) < 2:
                raise TrainingError(f"not enough labelled data to train {cfg.name}: {len(y)} rows")
            _needs_returns(cfg, data)
            cut = int(len(y) * (1 - cfg.validation.holdout_fraction))
            _set_progress(ctx, run_id, attempt, "fitting", 0.3, progress)
            fit = resolve_callable(cfg.entry_point, f"models.{cfg.name}.entry_point")
            beat.fitting()
            with ResourceMeter() as meter:
                estimator = fit(X[:cut], y[:cut], dict(cfg.params))
                if estimator is None or not hasattr(estimator, "predict"):
                    raise TrainingError(f"{cfg.entry_point} returned {type(estimator).__name__}, not a fitted model")
                # The walk-forward refits are training work too: metered and priced with the fit.
                gate, walk = plan_validation(ctx, cfg, data, cut, estimator, fit, now)
            beat.fitted()
            _set_progress(ctx, run_id, attempt, "saving artifact", 0.8, progress)
            artifact = ctx.artifacts.put_object(estimator)
            rng = np.random.default_rng(0)
            ref_idx = np.sort(rng.choice(cut, size=min(cut, REFERENCE_ROWS), replace=False))
            reference = ctx.artifacts.put_object(X[:cut][ref_idx])
            held: dict[str, Any] = {"X": X[cut:], "y": y[cut:], "ts": ts[cut:]}
            if data.ret is not None:
                held["ret"] = data.ret[cut:]
            if walk is not None:
                held["walk_forward"] = walk
            holdout = ctx.artifacts.put_object(held)
    except (TrainingError, ConfigError) as exc:
        # Deterministic: the same data and code would fail again. The run fails now.
        with ctx.store.tx() as tx:
            _end(tx, ctx, tx.runs.get(run_id, for_update=True), "failed", str(exc), ctx.now(), attempt=attempt)
        return TrainResult(run_id, "failed", detail=str(exc))
    except reraised:
        raise
    except Exception as exc:  # the model's own code or its data source raised: retry the run
        return _retry_or_die(ctx, run_id, attempt, f"{type(exc).__name__}: {exc}")
    # The slot is held until the version is registered (or the attempt is fenced off), so a
    # run in state 'training' always holds one: the limit reads the same from runs and slots.
    try:
        v = _register(ctx, cfg, run_id, attempt, meter, X, y, ts, cut, artifact, reference, holdout,
                      {"reference_rows": int(ref_idx.size), "returns": data.ret is not None,
                       **({"gate": gate} if gate is not None else {})})
    finally:
        _release_slot(ctx, run_id, attempt)
    return TrainResult(run_id, "registered", str(v))


def plan_validation(ctx: Context, cfg: ModelConfig, data: TrainingData, cut: int, estimator, fit,
                    now: datetime) -> tuple[dict | None, dict | None]:
    """The gate this candidate will go through (:func:`retrain.core.evidence.plan_gate`), and for a
    walk-forward gate its paired predictions; ``(None, None)`` when there is no production yet.

    Sizing uses the holdout rows production never trained on (newer than its ``data_end``):
    production's accuracy there and the share of rows the two models disagree on. The
    walk-forward scores the newest labelled rows production never trained on, at most the
    rows the test needs: those in the holdout with the candidate itself, older ones in
    ``validation.walk_forward_folds`` folds, each by a refit on every row before the fold.
    """
    with ctx.store.tx() as tx:
        prod_name = tx.aliases.get(cfg.name, "production")
        prod = tx.versions.get(cfg.name, prod_name) if prod_name else None
        if prod is None:
            return None, None
        prod_sha, prod_end = prod.artifact_sha256, prod.data_end
        v, r = cfg.validation, cfg.rollout
        hours = max(24.0, v.shadow_max_hours)
        labelled = tx.monitoring.traffic_since(cfg.name, now - timedelta(hours=hours))[0]
    production = ctx.artifacts.load_object(prod_sha)
    X, y, ts = data.X, data.y, data.ts
    after = prod_end.timestamp() if prod_end is not None else None
    # Holdout rows production never trained on start at ``unseen``.
    unseen = cut if after is None else min(len(y), cut + int(np.searchsorted(ts[cut:], after, side="right")))
    fair = unseen if len(y) - unseen >= 30 else cut  # too few to estimate from: the whole holdout
    c_hit = np.asarray(estimator.predict(X[fair:])) == y[fair:]
    p_hit = np.asarray(production.predict(X[fair:])) == y[fair:]
    level = float(p_hit.mean()) if p_hit.size else 0.5
    discordance = float((c_hit != p_hit).mean()) if p_hit.size else 0.0
    needed = paired_rows_needed(level, v.min_improvement, discordance=discordance, confidence=v.confidence,
                                power=v.power)
    canary_needed = independent_rows_needed(level, r.rollback_degradation, confidence=v.confidence, power=v.power)
    live_stages = tuple(r.stages) if r.enabled else ()
    plan = plan_gate(needed if v.shadow_min_rows is None else v.shadow_min_rows, labelled_per_hour=labelled / hours,
                     max_hours=v.shadow_max_hours, shadow=v.shadow_enabled,
                     canary_rows_needed=canary_needed if r.stage_min_samples is None else r.stage_min_samples,
                     stages=live_stages, stage_max_hours=r.stage_max_minutes / 60.0, walk_forward=v.walk_forward)
    gate = {**plan.to_json(), "production": prod_name, "production_level": round(level, 6),
            "discordance": round(discordance, 6), "canary_rows_needed": canary_needed}
    if plan.gate != "walk_forward":
        return gate, None
    folds = walk_forward_folds(ts[:cut], after=after, max_rows=max(0, needed - (len(y) - cut)),
                               folds=v.walk_forward_folds, min_train_rows=max(50, cut // 2))
    start = folds[0][0] if folds else unseen  # (folds exist only when every holdout row is unseen)
    preds = []
    for a, b in folds:
        refit = fit(X[:a], y[:a], dict(cfg.params))
        preds.append(np.asarray(refit.predict(X[a:b])))
    preds.append(np.asarray(estimator.predict(X[max(start, cut):])))
    idx = slice(start, len(y))
    walk = {"y": y[idx], "candidate": np.concatenate(preds) if preds else np.empty(0, dtype=y.dtype),
            "production": np.asarray(production.predict(X[idx])), "ts": ts[idx],
            "folds": [[int(a), int(b)] for a, b in folds], "refits": len(folds)}
    if data.ret is not None:
        walk["ret"] = data.ret[idx]
    gate.update(rows=int(len(y) - start), refits=len(folds))
    return gate, walk


def _register(ctx: Context, cfg: ModelConfig, run_id: str, attempt: int, meter, X, y, ts, cut, artifact, reference,
              holdout, extra: dict | None = None):
    usage = meter.usage
    cost = _price(ctx, cfg, usage, run_id)
    spec = VersionSpec(tuple(cfg.features), cfg.entry_point, cfg.training_fingerprint(),
                       fingerprint_array(X[:cut], y[:cut]))
    finished = ctx.now()
    with ctx.store.tx() as tx:
        tx.lock(versions_lock(cfg.name))
        run = tx.runs.get(run_id, for_update=True)
        assert run is not None  # claimed by this attempt
        lifecycle.fence(run, attempt=attempt, owner=ctx.worker_id, doing="nothing registered")
        # The training window is what the fit saw; the holdout (the newest rows) is recorded apart.
        v = register_version(tx, NewVersion(
            model=cfg.name, spec=spec, artifact=artifact, reference_sha256=reference.sha256,
            holdout_sha256=holdout.sha256, data_start=_dt(ts[0]), data_end=_dt(ts[cut - 1]), data_rows=int(cut),
            params=dict(cfg.params), settings={"lookback_hours": cfg.lookback_hours},
            metrics={"holdout_rows": int(len(y) - cut), "holdout_start": _dt(ts[cut]).isoformat() if cut < len(ts)
                     else None, "holdout_end": _dt(ts[-1]).isoformat(), **(extra or {})},
            git_commit=_git_commit(cfg.entry_point), request_id=run.request_id, decision_id=run.decision_id,
            run_id=run.id, cost_usd=cost.total_usd,
        ), now=finished, actor=ctx.worker_id, artifacts=ctx.artifacts,
            note=f"; fit {usage.wall_seconds:.2f}s, cost ${cost.total_usd:.4f}",
            audit_data={"rows": int(cut), "usage": asdict(usage), "cost": asdict(cost)}).version
        run = lifecycle.to_validating(tx, run, str(v), attempt=attempt, owner=ctx.worker_id,
                                      usage={**asdict(usage), **asdict(cost)})
        reserved = tx.ledger.held_reservation(run.id)
        if reserved:
            tx.ledger.add(run.id, cfg.name, "release", -reserved, finished, {"reason": "replaced by actual cost"})
        tx.ledger.add(run.id, cfg.name, "actual", cost.total_usd, finished, asdict(cost))
        tx.outbox.enqueue(VALIDATE, {"v": 1, "run_id": run.id}, finished, priority=run.priority)
    return v


def _price(ctx: Context, cfg: ModelConfig, usage, run_id: str):
    """Measured usage priced by the configured rates, plus the opportunity cost of the gap
    the model was running with while it trained (value lost per prediction served)."""
    c = ctx.config.costs
    rates = CostRates(usd_per_cpu_second=c.usd_per_cpu_second, usd_per_gb_hour=c.usd_per_gb_hour,
                      usd_per_slot_hour=c.usd_per_slot_hour,
                      value_per_accuracy_point_usd=ctx.config.policy_for(cfg.name).value_per_accuracy_point_usd)
    billed = replace(usage, wall_seconds=max(usage.wall_seconds, c.min_billed_seconds))
    with ctx.store.tx() as tx:
        run = tx.runs.get(run_id)
        assert run is not None  # claimed by this attempt
        req = tx.requests.get(run.request_id)
        ev = (req.evidence or {}) if req else {}
        now = ctx.now()
        served, minutes, first, last = tx.monitoring.served(cfg.name, now - timedelta(days=30), now)
    # The same rate as the decision's value model: read between the newest buckets, so a label
    # delay (outcomes arrive a day late) does not read as no traffic.
    per_s = serving_rate(served, minutes, first, last, now)[0] / 86400.0
    gap = 0.0
    if ev.get("baseline_accuracy") is not None and ev.get("current_accuracy") is not None:
        gap = max(0.0, (ev["baseline_accuracy"] - ev["current_accuracy"]) * 100)
    return price(billed, rates, Opportunity(accuracy_gap_points=gap, predictions_per_second=per_s))


def _dt(epoch: float) -> datetime:
    from datetime import timezone

    return datetime.fromtimestamp(float(epoch), tz=timezone.utc)


def fail_run(ctx: Context, run_id: str, reason: str) -> bool:
    """Mark a run failed from outside the fit (e.g. its soft time limit), freeing its slot.

    Only the attempt this process holds is failed: a stale duplicate's timeout leaves
    the live attempt alone. Returns True if the run was failed.
    """
    with ctx.store.tx() as tx:
        run = tx.runs.get(run_id, for_update=True)
        return run is not None and _end(tx, ctx, run, "failed", reason, ctx.now(), owner=ctx.worker_id)
