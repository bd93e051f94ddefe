"""A small world for the rollout tests: market regimes, models fitted on them, registered versions,
and a trading app that serves through the real ModelRouter and reports through the real client.

Regimes are explicit weight vectors: ``A`` and ``B`` are orthogonal (a model of one scores
~0.50 on the other, ~0.60 on its own) and ``anti-B`` is ``-B`` (a model of ``B`` scores
~0.40 there). Models are fitted once per regime and process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from retrain.client import RetrainClient
from retrain.config import parse_config
from retrain.examples.direction import train
from retrain.examples.market import Regime, SyntheticMarket
from retrain.serving import ModelRouter, StoreRoutingReader
from retrain.steps.dispatch import drain, run_step
from tests.conftest import T0
from tests.runs import make_run

MODEL = "direction"
FEATURES = [f"f{i}" for i in range(8)]
WEIGHTS = {"A": np.eye(8)[0], "B": np.eye(8)[1], "anti-A": -np.eye(8)[0], "anti-B": -np.eye(8)[1]}


def config(validation: dict | None = None, rollout: dict | None = None, **model):
    """The example model with the live sample as data source, sized for tests."""
    body = {
        "entry_point": "retrain.examples.direction:train", "data_source": "sample", "features": FEATURES,
        "sample": {"rate": 1.0, "max_rows": 200_000}, "drift": {"enabled": False},
        "validation": {"shadow_min_hours": 0.5, "shadow_max_hours": 3, "shadow_min_rows": 300, **(validation or {})},
        "rollout": {"stage_min_minutes": 20, "stage_min_samples": 100, "stage_max_minutes": 180, **(rollout or {})},
        **model,
    }
    return parse_config({"policy": {"approval_days": 0}, "models": {MODEL: body}}, "rollout test config")


def market(schedule: list[tuple[timedelta, str]], rows_per_minute: int = 30, seed: int = 5) -> SyntheticMarket:
    """Live traffic: regime ``name`` from ``T0 + offset`` for each (offset, name)."""
    return SyntheticMarket(seed=seed, rows_per_minute=rows_per_minute, start=T0 - timedelta(days=1),
                           regimes=[Regime(T0 + off, WEIGHTS[name]) for off, name in schedule])


def draw(regime: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` live rows of ``regime`` (X, y, ret), as the synthetic market makes them, at any rate."""
    X = rng.standard_normal((n, 8))
    ret = 0.001 * (X @ WEIGHTS[regime] + 3.0 * rng.standard_normal(n))
    return X, (ret > 0).astype(np.int8), ret


@functools.lru_cache(maxsize=8)
def fitted(regime: str, seed: int = 99):
    """A model of ``regime`` fitted on 4 h of it, with a holdout of 1 h of it."""
    m = SyntheticMarket(seed=seed, rows_per_minute=60, start=T0 - timedelta(days=3),
                        regimes=[Regime(T0 - timedelta(days=3), WEIGHTS[regime])])
    fit_rows = m.rows(T0 - timedelta(days=2), T0 - timedelta(days=2) + timedelta(hours=4))
    hold = m.rows(T0 - timedelta(days=1), T0 - timedelta(days=1) + timedelta(hours=1))
    return train(fit_rows.X, fit_rows.y, {}), {"X": hold.X, "y": hold.y}


def add_version(ctx, version: str, regime: str, seed: int = 99, *, store=None, artifacts=None, now=None) -> str:
    """Register a version fitted on ``regime``; its holdout is that regime too."""
    store, artifacts, now = store or ctx.store, artifacts or ctx.artifacts, now or ctx.now()
    est, holdout = fitted(regime, seed)
    art = artifacts.put_object(est)
    hold = artifacts.put_object(holdout)
    major, minor, patch = (int(p) for p in version.split("."))
    with store.tx() as tx:
        tx.versions.add(model=MODEL, version=version, major=major, minor=minor, patch=patch, status="registered",
                        created_at=now, deleted_at=None, artifact_sha256=art.sha256, artifact_size=art.size,
                        bump_kind="minor", bump_reason="test", parent_version=None, feature_schema=FEATURES,
                        params={}, metrics={"holdout_sha256": hold.sha256, "holdout_rows": len(holdout["y"])})
    return art.sha256


def make_production(ctx, version: str, *, store=None, now=None) -> None:
    store, now = store or ctx.store, now or ctx.now()
    with store.tx() as tx:
        tx.aliases.move(MODEL, "production", version, actor="test", reason="given", now=now)
        tx.versions.update(tx.versions.get(MODEL, version), status="production")


def new_candidate_run(store, version: str, now: datetime) -> str:
    """A run whose candidate has just been trained, with its ``retrain.validate`` message in the outbox."""
    with store.tx() as tx:
        run_id = make_run(tx, MODEL, now, state="validating", version=version).id
        tx.outbox.enqueue("retrain.validate", {"v": 1, "run_id": run_id}, now, priority=3)
    return run_id


def start_candidate(ctx, version: str) -> str:
    """Validate a new candidate in-process (holdout, then shadow)."""
    run_id = new_candidate_run(ctx.store, version, ctx.now())
    drain(ctx)
    return run_id


@dataclass
class App:
    """The trading app: serves every row of ``market`` through a ModelRouter, reports through a client.

    Labels are reported ``label_delay`` after the prediction (late labels); rows of one
    step are predicted at the step's start. Each step ends with ``retrain.evaluate_rollouts``.
    """

    ctx: object
    market: SyntheticMarket
    label_delay: timedelta = timedelta(0)
    step: timedelta = timedelta(minutes=5)
    served: dict[str, int] = field(default_factory=dict)
    _late: list[tuple[datetime, str, int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        ctx = self.ctx
        self.client = RetrainClient(sender=lambda task, payload, queue, prio: run_step(ctx, task, payload),
                                    clock=ctx.clock, start=False, prediction_ttl_s=7 * 86400)
        self.router = ModelRouter(MODEL, reader=StoreRoutingReader(ctx.store), artifacts=ctx.artifacts,
                                  client=self.client, start=False)

    def run(self, duration: timedelta, *, until=None, evaluate: bool = True) -> None:
        """Serve for ``duration`` (or until ``until(ctx)`` is true after a step)."""
        end = self.ctx.now() + duration
        while self.ctx.now() < end:
            self.tick(evaluate=evaluate)
            if until is not None and until(self.ctx):
                return

    def tick(self, evaluate: bool = True) -> None:
        ctx = self.ctx
        now = ctx.now()
        self.router.refresh()
        rows = self.market.rows(now, now + self.step)
        for i in range(len(rows)):
            pid = f"{int(rows.ts[i])}-{i}"
            _, version = self.router.predict(rows.X[i], pid, prediction_id=pid, ts=float(rows.ts[i]))
            self.served[version] = self.served.get(version, 0) + 1
            self._late.append((now + self.label_delay, pid, int(rows.y[i]), float(rows.ret[i])))
        ctx.clock.advance(self.step)
        due = [x for x in self._late if x[0] <= ctx.now()]
        self._late = [x for x in self._late if x[0] > ctx.now()]
        for _, pid, label, ret in due:
            self.client.report_outcome(MODEL, pid, label, ret)
        self.client.flush()
        if evaluate:
            run_step(ctx, "retrain.evaluate_rollouts", {"v": 1})
        drain(ctx)

    def close(self) -> None:
        self.router.close()
        self.client.close(timeout_s=2)


def rollout_row(ctx, run_id: str):
    with ctx.store.tx() as tx:
        return tx.rollouts.get(run_id)


def aliases(ctx) -> dict[str, tuple[str | None, float]]:
    with ctx.store.tx() as tx:
        return {a: (r.version, r.share_pct) for a, r in tx.aliases.all(MODEL).items()}
