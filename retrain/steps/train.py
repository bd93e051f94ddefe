"""Train: claim the run under a lease, fit the model's own entry point on its data source,
store the artifact and register the next semantic version.

The attempt counter is committed before any work starts and doubles as a fencing
token: the version is registered only if this attempt still holds the lease, so a
stale duplicate (a redelivered message, a worker that came back) has no effect.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from retrain.config import ModelConfig, resolve_callable
from retrain.context import Context
from retrain.costs import CostRates, Opportunity, ResourceMeter, price
from retrain.errors import StaleLeaseError, TrainingError
from retrain.storage.repo import Tx
from retrain.versioning import SemVer, VersionSpec, decide_bump, fingerprint_array

__all__ = ["TrainResult", "train_run", "fail_run", "load_training_data", "SLOT_LOCK"]

SLOT_LOCK = "retrain:training-slots"
REFERENCE_ROWS = 5000

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    status: str  # registered | skipped | busy | dead
    version: str | None = None
    detail: str = ""


def _git_commit(entry_point: str) -> str | None:
    module = entry_point.split(":")[0].split(".")[0]
    try:
        spec_path = Path(__import__(module).__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(spec_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except Exception:  # no git, not a checkout: the commit is optional metadata
        return None


def load_training_data(ctx: Context, cfg: ModelConfig, now: datetime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, ts) in time order from the model's data source, only what is visible at ``now``."""
    lookback = timedelta(hours=cfg.lookback_hours)
    if cfg.data_source == "sample":
        with ctx.store.tx() as tx:
            rows = tx.samples(cfg.name, since=now - lookback, until=now)
        X = np.asarray([r.features for r in rows], dtype=np.float64).reshape(-1, cfg.n_features)
        y = np.asarray([r.label for r in rows], dtype=np.int64)
        ts = np.asarray([r.ts.timestamp() for r in rows], dtype=np.float64)
        return X, y, ts
    source = resolve_callable(cfg.data_source, f"models.{cfg.name}.data_source")
    X, y, ts = source(now, lookback, dict(cfg.params))
    X, y, ts = np.asarray(X, dtype=np.float64), np.asarray(y), np.asarray(ts, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != cfg.n_features:
        raise TrainingError(f"data source {cfg.data_source} returned shape {X.shape}; expected (n, {cfg.n_features})")
    order = np.argsort(ts, kind="stable")
    return X[order], y[order], ts[order]


def _claim(ctx: Context, run_id: str, now: datetime) -> tuple[str, int | None, str]:
    """Take the run's lease and a training slot. Returns (status, attempt, detail)."""
    s = ctx.settings
    with ctx.store.tx() as tx:
        tx.lock(SLOT_LOCK)
        run = tx.run(run_id, for_update=True)
        if run is None:
            return "skipped", None, "unknown run"
        if run.state not in ("queued", "training"):
            return "skipped", None, f"run is {run.state}"
        if run.state == "training" and run.lease_expires_at and run.lease_expires_at > now:
            return "skipped", None, f"run is held by {run.lease_owner} until {run.lease_expires_at.isoformat()}"
        if run.attempt >= s.max_attempts:
            _finish_failed(tx, run, "dead", f"gave up after {run.attempt} attempts", now)
            return "dead", None, f"gave up after {run.attempt} attempts"
        if tx.count_training(now) >= s.training_slots:
            run.blocked_on = f"a free training slot ({s.training_slots} in use)"
            return "busy", None, run.blocked_on
        run.attempt += 1
        run.state, run.stage, run.progress, run.blocked_on = "training", "loading data", 0.05, None
        run.lease_owner, run.lease_expires_at = ctx.worker_id, now + timedelta(seconds=s.lease_s)
        run.started_at = run.started_at or now
        tx.audit(now, "training", ctx.worker_id, f"training of {run.model} started (attempt {run.attempt})",
                 model=run.model, subject=run.id, data={"attempt": run.attempt})
        return "claimed", run.attempt, ""


def _finish_failed(tx: Tx, run, state: str, reason: str, now: datetime) -> None:
    run.state, run.error, run.finished_at, run.lease_owner, run.lease_expires_at = state, reason, now, None, None
    reserved = tx.held_reservation(run.id)
    if reserved:
        tx.add_cost(run.id, run.model, "release", -reserved, now, {"reason": reason})
    tx.audit(now, "run", "system", f"run of {run.model} {state}: {reason}", model=run.model, subject=run.id)


def _set_progress(ctx: Context, run_id: str, attempt: int, stage: str, pct: float, progress: Progress | None) -> None:
    with ctx.store.tx() as tx:
        run = tx.run(run_id, for_update=True)
        if run is not None and run.attempt == attempt and run.lease_owner == ctx.worker_id:
            run.stage, run.progress = stage, pct
            run.lease_expires_at = ctx.now() + timedelta(seconds=ctx.settings.lease_s)
    if progress:
        progress(stage, pct)


class _Heartbeat:
    """Renews the lease while the model's own code runs, so a long fit keeps its slot."""

    def __init__(self, ctx: Context, run_id: str, attempt: int) -> None:
        self.ctx, self.run_id, self.attempt = ctx, run_id, attempt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{run_id[:8]}", daemon=True)

    def _loop(self) -> None:
        every = max(1.0, self.ctx.settings.lease_s / 3)
        while not self._stop.wait(every):
            try:
                with self.ctx.store.tx() as tx:
                    run = tx.run(self.run_id, for_update=True)
                    if run is None or run.attempt != self.attempt or run.lease_owner != self.ctx.worker_id:
                        return
                    run.lease_expires_at = self.ctx.now() + timedelta(seconds=self.ctx.settings.lease_s)
            except Exception:  # a missed renewal is retried next beat; the lease is generous
                continue

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def train_run(ctx: Context, run_id: str, progress: Progress | None = None) -> TrainResult:
    now = ctx.now()
    status, attempt, detail = _claim(ctx, run_id, now)
    if status != "claimed":
        return TrainResult(run_id, status, detail=detail)
    assert attempt is not None
    with ctx.store.tx() as tx:
        run = tx.run(run_id)
        cfg = ctx.config.model(run.model)
    try:
        with _Heartbeat(ctx, run_id, attempt):
            X, y, ts = load_training_data(ctx, cfg, now)
            if len(y) < 50 or len(np.unique(y)) < 2:
                raise TrainingError(f"not enough labelled data to train {cfg.name}: {len(y)} rows")
            cut = int(len(y) * (1 - cfg.validation.holdout_fraction))
            _set_progress(ctx, run_id, attempt, "fitting", 0.3, progress)
            fit = resolve_callable(cfg.entry_point, f"models.{cfg.name}.entry_point")
            with ResourceMeter() as meter:
                estimator = fit(X[:cut], y[:cut], dict(cfg.params))
            if estimator is None or not hasattr(estimator, "predict"):
                raise TrainingError(f"{cfg.entry_point} returned {type(estimator).__name__}, not a fitted model")
            _set_progress(ctx, run_id, attempt, "saving artifact", 0.8, progress)
            artifact = ctx.artifacts.put_object(estimator)
            rng = np.random.default_rng(0)
            ref_idx = np.sort(rng.choice(cut, size=min(cut, REFERENCE_ROWS), replace=False))
            reference = ctx.artifacts.put_object(X[:cut][ref_idx])
            holdout = ctx.artifacts.put_object({"X": X[cut:], "y": y[cut:], "ts": ts[cut:]})
    except TrainingError as exc:
        with ctx.store.tx() as tx:
            run = tx.run(run_id, for_update=True)
            if run.attempt == attempt:
                _finish_failed(tx, run, "failed", str(exc), ctx.now())
        return TrainResult(run_id, "failed", detail=str(exc))

    usage = meter.usage
    cost = _price(ctx, cfg, usage, run_id)
    spec = VersionSpec(list(cfg.features), cfg.entry_point, cfg.training_fingerprint(),
                       fingerprint_array(X[:cut], y[:cut]))
    finished = ctx.now()
    with ctx.store.tx() as tx:
        tx.lock(f"retrain:versions:{cfg.name}")
        run = tx.run(run_id, for_update=True)
        if run.attempt != attempt or run.lease_owner != ctx.worker_id or run.state != "training":
            raise StaleLeaseError(f"run {run_id} attempt {attempt} lost its lease (now attempt {run.attempt}, "
                                  f"owner {run.lease_owner}, state {run.state}); nothing registered")
        prod = tx.alias(cfg.name, "production")
        parent_row = tx.version(cfg.name, prod) if prod else None
        latest_row = tx.latest_version(cfg.name)
        parent_spec = VersionSpec.from_json(parent_row.params["spec"]) if parent_row else None
        bump = decide_bump(parent_spec, spec, parent_version=SemVer.parse(prod) if prod else None,
                           latest=SemVer.parse(latest_row.version) if latest_row else None)
        v = bump.version
        tx.add_version(
            model=cfg.name, version=str(v), major=v.major, minor=v.minor, patch=v.patch, status="registered",
            created_at=finished, deleted_at=None, artifact_sha256=artifact.sha256, artifact_size=artifact.size,
            bump_kind=bump.kind, bump_reason=bump.reason, parent_version=prod,
            data_start=_dt(ts[0]), data_end=_dt(ts[-1]), data_rows=int(cut), data_fingerprint=spec.data_fingerprint,
            feature_schema=list(cfg.features),
            params={"params": dict(cfg.params), "spec": spec.to_json(), "lookback_hours": cfg.lookback_hours},
            metrics={"reference_sha256": reference.sha256, "holdout_sha256": holdout.sha256,
                     "holdout_rows": int(len(y) - cut)},
            git_commit=_git_commit(cfg.entry_point), request_id=run.request_id, decision_id=run.decision_id,
            run_id=run.id, cost_usd=cost.total_usd,
        )
        run.state, run.stage, run.progress = "validating", "validating", 1.0
        run.candidate_version = str(v)
        run.lease_owner, run.lease_expires_at = None, None
        run.usage = {**asdict(usage), **asdict(cost)}
        reserved = tx.held_reservation(run.id)
        if reserved:
            tx.add_cost(run.id, cfg.name, "release", -reserved, finished, {"reason": "replaced by actual cost"})
        tx.add_cost(run.id, cfg.name, "actual", cost.total_usd, finished, asdict(cost))
        tx.audit(finished, "version", ctx.worker_id,
                 f"{cfg.name} {v} registered ({bump.reason}); fit {usage.wall_seconds:.2f}s, cost ${cost.total_usd:.4f}",
                 model=cfg.name, subject=str(v), data={"run_id": run.id, "sha256": artifact.sha256,
                                                       "rows": int(cut), "usage": asdict(usage), "cost": asdict(cost)})
        tx.enqueue("retrain.validate", {"v": 1, "run_id": run.id}, finished, priority=run.priority)
    return TrainResult(run_id, "registered", str(v))


def _price(ctx: Context, cfg: ModelConfig, usage, run_id: str):
    """Measured usage priced by the configured rates, plus the opportunity cost of the gap
    the model was running with while it trained (value lost per prediction served)."""
    c = ctx.config.costs
    rates = CostRates(usd_per_cpu_second=c.usd_per_cpu_second, usd_per_gb_hour=c.usd_per_gb_hour,
                      usd_per_slot_hour=c.usd_per_slot_hour,
                      value_per_accuracy_point_usd=ctx.config.policy_for(cfg.name).value_per_accuracy_point_usd)
    billed = replace(usage, wall_seconds=max(usage.wall_seconds, c.min_billed_seconds))
    with ctx.store.tx() as tx:
        run = tx.run(run_id)
        req = tx.request(run.request_id)
        ev = (req.evidence or {}) if req else {}
        recent = tx.buckets(cfg.name, None, ctx.now() - timedelta(days=1))
    per_s = sum(b.n + b.unlabelled for b in recent) / 86400.0
    gap = 0.0
    if ev.get("baseline_accuracy") is not None and ev.get("current_accuracy") is not None:
        gap = max(0.0, (ev["baseline_accuracy"] - ev["current_accuracy"]) * 100)
    return price(billed, rates, Opportunity(accuracy_gap_points=gap, predictions_per_second=per_s))


def _dt(epoch: float) -> datetime:
    from datetime import timezone

    return datetime.fromtimestamp(float(epoch), tz=timezone.utc)


def fail_run(ctx: Context, run_id: str, reason: str) -> None:
    """Mark a run failed from outside the fit (e.g. its time limit), freeing its slot."""
    with ctx.store.tx() as tx:
        run = tx.run(run_id, for_update=True)
        if run is not None and run.state == "training":
            _finish_failed(tx, run, "failed", reason, ctx.now())
