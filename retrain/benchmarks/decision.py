"""How fast the decision is: the pure policy, and the whole decision step on Postgres.

``retrain bench decision [--json]`` prints both (:func:`run`):

``decide_p50_us``, ``decide_p99_us`` (:func:`run_pure`)
    :func:`retrain.core.policy.decide` over realistic, varied states. The
    requirement claims 0.1 ms per decision and sets 100 ms as the target; we
    aim for a p99 under 50 us. Inputs are generated up front from a seeded RNG
    (triggers in a plausible mix, run histories, spend near and over the caps,
    resource readings, young and old deployments, active runs, pauses,
    overrides) so that only ``decide`` itself is timed, one call at a time,
    with ``time.perf_counter_ns``. The garbage collector stays on: a
    production decision pays for it too.
``task_p50_ms``, ``task_p99_ms`` (:func:`run_task`)
    :func:`retrain.steps.decide.decide_request`, the body of the
    ``retrain.decide`` task, against a real Postgres: take the lock, load the
    snapshot, decide, record the decision and its audit events, reserve the
    estimate, create the run and leave ``retrain.train`` in the outbox, commit.
    Target p99 under 10 ms. The database is a throwaway one created for the
    run (``RETRAIN_BENCH_PG_ADMIN_URL``, default the local ``postgres``
    superuser) and dropped at the end. It is seeded like a month of
    production: 7 models, a production version each, three days of per-minute
    metric buckets (5 predictions/s), a month of runs and ledger rows. The
    simulated clock moves about 7 minutes between requests, so cooldowns
    expire, days and budgets roll over and verdicts vary; an approved run
    finishes 10-40 simulated minutes later (its reservation replaced by a
    measured cost), and requests for its model meanwhile are coalesced.
``tx_select1_p50_ms``, ``tx_select1_p99_ms``
    One transaction with one ``SELECT 1`` through the same store, measured in
    the same run: the floor the step stands on. On a shared, noisy machine the
    step's figures read best as a multiple of it.

Run ``python -m retrain.benchmarks.decision`` to print the figures as JSON.
"""

from __future__ import annotations

import gc
import json
import os
import random
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrain.core.domain import RetrainRequest, Severity, TriggerKind
from retrain.core.policy import Policy, ResourceReading, StateSnapshot, decide

if TYPE_CHECKING:
    pass

__all__ = ["run", "run_pure", "run_task", "make_cases", "throwaway_database", "PG_ADMIN_URL"]

PG_ADMIN_URL = os.environ.get("RETRAIN_BENCH_PG_ADMIN_URL",
                              "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")

_TRIGGERS = (TriggerKind.PERFORMANCE, TriggerKind.DRIFT, TriggerKind.SCHEDULE, TriggerKind.MANUAL,
             TriggerKind.EMERGENCY)
_WEIGHTS = (30, 25, 25, 10, 10)


def make_cases(k: int, seed: int = 0) -> list[tuple[RetrainRequest, StateSnapshot, datetime]]:
    """``k`` varied (request, state, now) triples, the same for the same seed."""
    rng = random.Random(seed)
    base = datetime(2026, 3, 1, tzinfo=timezone.utc)
    cases = []
    for i in range(k):
        # Spread over 60 days so that DST changes and month ends are crossed.
        now = base + timedelta(seconds=rng.randrange(60 * 86400))
        trig = rng.choices(_TRIGGERS, _WEIGHTS)[0]
        evidence: dict[str, Any] = {}
        if trig in (TriggerKind.PERFORMANCE, TriggerKind.EMERGENCY) or rng.random() < 0.3:
            baseline = rng.uniform(0.58, 0.62)
            evidence = {"baseline_accuracy": baseline, "current_accuracy": baseline - rng.uniform(0.0, 0.08)}
        override = rng.random() < 0.03
        if override:
            evidence["override_reason"] = "desk asked for it"
        if rng.random() < 0.05:
            evidence["approved_by"] = "ops"
        req = RetrainRequest(
            id=f"req-{i}", model=f"m{i % 7}", trigger=trig, created_at=now, reason="bench", evidence=evidence,
            severity=Severity.HIGH if trig is TriggerKind.EMERGENCY else None, override_budget=override,
        )
        starts = tuple(now - timedelta(seconds=rng.randrange(31 * 86400)) for _ in range(rng.randrange(0, 9)))
        if rng.random() < 0.3:
            starts += (now - timedelta(seconds=rng.randrange(8 * 3600)),)
        state = StateSnapshot(
            model=req.model,
            deployed_at=now - timedelta(days=rng.uniform(0.0, 200.0)),
            recent_run_starts=starts,
            runs_today_global=rng.randrange(0, 12),
            active_run_id=f"run-{i}" if rng.random() < 0.1 else None,
            spend_today_usd=rng.uniform(0.0, 11.0),
            spend_month_usd=rng.uniform(0.0, 100.0),
            model_spend_today_usd=rng.uniform(0.0, 5.0),
            model_spend_month_usd=rng.uniform(0.0, 40.0),
            estimated_cost_usd=rng.choice((0.4, 1.2, 2.5, 4.0, 12.0)),
            # Mostly busy models (the trading app serves ~5,000/s), some quiet ones.
            predictions_per_day=rng.choices((1e5, 1e7, 4.32e8), (1, 3, 6))[0],
            paused=rng.random() < 0.02,
            resources=None if rng.random() < 0.2 else ResourceReading(
                free_memory_mb=rng.uniform(200.0, 16000.0), cpu_load_pct=rng.uniform(0.0, 300.0),
                free_disk_mb=rng.uniform(500.0, 200000.0)),
        )
        cases.append((req, state, now))
    return cases


def _pct(sorted_ns: list[int], q: float) -> float:
    i = min(len(sorted_ns) - 1, int(q * len(sorted_ns)))
    return sorted_ns[i] / 1000.0


def run_pure(n: int = 20000, seed: int = 0) -> dict[str, Any]:
    """Time ``n`` calls of ``decide`` over 1,024 varied cases; figures in microseconds."""
    policy = Policy(timezone="Europe/London", max_runs_global_per_day=10, model_monthly_budget_usd=30.0)
    cases = make_cases(1024, seed)
    for req, state, now in cases:  # warm caches (zoneinfo, attribute lookups)
        decide(req, state, policy, now)
    clock = time.perf_counter_ns
    timings: list[int] = []
    by_kind: dict[str, list[int]] = {}
    verdicts: Counter[str] = Counter()
    gc.collect()
    m = len(cases)
    for i in range(n):
        req, state, now = cases[i % m]
        t0 = clock()
        d = decide(req, state, policy, now)
        dt = clock() - t0
        timings.append(dt)
        by_kind.setdefault(req.trigger.value, []).append(dt)
        verdicts[d.verdict.value] += 1
    timings.sort()
    out: dict[str, Any] = {
        "n": n,
        "cases": m,
        "decide_p50_us": round(_pct(timings, 0.50), 2),
        "decide_p99_us": round(_pct(timings, 0.99), 2),
        "decide_mean_us": round(sum(timings) / n / 1000.0, 2),
        "decide_max_us": round(timings[-1] / 1000.0, 2),
        "verdicts": dict(sorted(verdicts.items())),
    }
    for kind, ts in sorted(by_kind.items()):
        ts.sort()
        out[f"{kind}_p99_us"] = round(_pct(ts, 0.99), 2)
    return out


# -- the whole step on Postgres ------------------------------------------------------------


@contextmanager
def throwaway_database(admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    """A new, migrated Postgres database for one run; dropped afterwards whatever happens."""
    from sqlalchemy import create_engine, text

    from retrain.storage.db import make_engine
    from retrain.storage.schema import upgrade

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"retrain_bench_{uuid.uuid4().hex[:10]}"
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def _bench_config(n_models: int):
    from retrain.config import parse_config

    model = {
        "entry_point": "retrain.examples.direction:train",
        "data_source": "retrain.examples.direction:history",
        "features": [f"f{i}" for i in range(8)],
        "first_run_cost_usd": 0.4,
    }
    models = {f"m{i}": dict(model) for i in range(n_models)}
    models["m1"]["policy"] = {"cooldown_hours": 2.0, "max_runs_per_model_per_day": 4}
    return parse_config({"policy": {"value_per_accuracy_point_usd": 1e-5, "max_runs_global_per_day": 12,
                                    "model_monthly_budget_usd": 30.0},
                         "models": models}, source="<bench>")


def _seed(ctx, now: datetime, rng: random.Random) -> None:
    """A month of history for every model (see the module docstring)."""
    from retrain.core import lifecycle
    from retrain.steps.requests import sync_models

    sync_models(ctx)
    with ctx.store.tx() as tx:
        for i, name in enumerate(sorted(ctx.config.models)):
            tx.models.set_deployed(name, now - timedelta(days=3 if i == 0 else 90))
            tx.versions.add(model=name, version="1.0.0", major=1, minor=0, patch=0, status="production",
                            created_at=now - timedelta(days=40), deleted_at=None, artifact_sha256="0" * 64,
                            artifact_size=1, bump_kind="initial", bump_reason="bench", parent_version=None,
                            data_start=None, data_end=None, data_rows=0, data_fingerprint="", feature_schema=[],
                            params={}, metrics={"baseline": {"accuracy": 0.60}}, git_commit=None, request_id=None,
                            decision_id=None, run_id=None, cost_usd=0.0)
            tx.aliases.move(name, "production", "1.0.0", actor="bench", reason="seed", now=now - timedelta(days=40))
            start = now.replace(second=0, microsecond=0) - timedelta(days=1)
            acc = rng.uniform(0.55, 0.60)
            buckets = []
            for m in range(3 * 24 * 60):  # a day, and the two the run goes on to simulate
                n = 300
                correct = int(n * acc)
                buckets.append({"model": name, "version": "1.0.0", "minute": start + timedelta(minutes=m), "n": n,
                                "tp": correct // 2, "tn": correct - correct // 2, "fp": (n - correct) // 2,
                                "fn": n - correct - (n - correct) // 2, "ret_sum": 0.0, "ret_sq_sum": 0.0,
                                "unlabelled": 0})
            tx.monitoring.add_buckets(buckets)
            costs = []
            for k in range(12):
                at = now - timedelta(days=30) + timedelta(days=2.4 * k, minutes=rng.randrange(600))
                # A finished run of the past, moved through its lifecycle like any other.
                run = lifecycle.new_run(tx, model=name, request_id=str(uuid.uuid4()),
                                        decision_id=str(uuid.uuid4()), trigger="performance", priority=7, now=at)
                rid = run.id
                run = lifecycle.start_training(tx, run, owner="bench", now=at, lease_until=at)
                run = lifecycle.to_validating(tx, run, None, attempt=run.attempt, owner="bench")
                run = lifecycle.to_promotion(tx, run)
                lifecycle.complete(tx, run, at + timedelta(minutes=5))
                est, actual = 0.4, rng.uniform(0.2, 0.8)
                for kind, amount in (("reservation", est), ("release", -est), ("actual", actual)):
                    costs.append({"run_id": rid, "model": name, "kind": kind, "amount_usd": amount, "at": at,
                                  "day": at.strftime("%Y-%m-%d"), "month": at.strftime("%Y-%m"), "detail": {}})
            tx.ledger.add_many(costs)  # after the runs (it flushes them first)


def _new_request(ctx, rng: random.Random, now: datetime) -> str:
    from retrain.core.domain import RetrainRequest, Severity

    trig = rng.choices(_TRIGGERS, _WEIGHTS)[0]
    evidence: dict[str, Any] = {}
    if trig in (TriggerKind.PERFORMANCE, TriggerKind.EMERGENCY):
        evidence = {"baseline_accuracy": 0.60, "current_accuracy": rng.uniform(0.50, 0.58), "version": "1.0.0"}
    rid = str(uuid.uuid4())
    with ctx.store.tx() as tx:
        tx.requests.open(RetrainRequest(
            id=rid, model=f"m{rng.randrange(len(ctx.config.models))}", trigger=trig, created_at=now, reason="bench",
            evidence=evidence, severity=Severity.HIGH if trig is TriggerKind.EMERGENCY else None,
            requested_by="bench"), exclusive=False)
    return rid


def _finish(ctx, run_id: str, rng: random.Random) -> None:
    """What the training step does at the end: the reservation becomes the measured cost.

    The run walks its lifecycle to ``done`` at once (trained, validated, promoted): the
    benchmark times decisions, not the steps that would move it there."""
    from retrain.core import lifecycle

    with ctx.store.tx() as tx:
        run = tx.runs.get(run_id, for_update=True)
        now = ctx.now()
        run = lifecycle.start_training(tx, run, owner=ctx.worker_id, now=now, lease_until=now)
        run = lifecycle.to_validating(tx, run, None, attempt=run.attempt, owner=ctx.worker_id)
        run = lifecycle.to_promotion(tx, run)
        lifecycle.complete(tx, run, now)
        held = tx.ledger.held_reservation(run_id)
        tx.ledger.add(run_id, run.model, "release", -held, ctx.now(), {"reason": "replaced by actual cost"})
        tx.ledger.add(run_id, run.model, "actual", held * rng.uniform(0.5, 1.5), ctx.now(), {})


def _floor(ctx, n: int = 300) -> dict[str, float]:
    """One transaction with one ``SELECT 1`` through the same store: the floor a step stands on.

    The machines are shared and noisy; the step's figures read best as a multiple
    of this one, measured in the same run.
    """
    clock_ns = time.perf_counter_ns
    timings = []
    for _ in range(n):
        t0 = clock_ns()
        with ctx.store.tx() as tx:
            tx.ping()
        timings.append(clock_ns() - t0)
    timings.sort()
    return {"tx_select1_p50_ms": round(_pct(timings, 0.50) / 1000.0, 3),
            "tx_select1_p99_ms": round(_pct(timings, 0.99) / 1000.0, 3)}


def run_task(n: int = 400, seed: int = 0, admin_url: str = PG_ADMIN_URL) -> dict[str, Any]:
    """Time ``n`` whole decision steps against a throwaway Postgres; figures in milliseconds."""
    from retrain.artifacts import ArtifactStore
    from retrain.context import Context
    from retrain.core.clock import SimClock
    from retrain.settings import Settings
    from retrain.steps.decide import decide_request, resolve_pending
    from retrain.storage.db import Database
    from retrain.storage.repo import Store

    rng = random.Random(seed)
    start = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
    clock = SimClock(start)
    reading = ResourceReading(free_memory_mb=8000.0, cpu_load_pct=30.0, free_disk_mb=50_000.0)
    with throwaway_database(admin_url) as url, tempfile.TemporaryDirectory(prefix="retrain-bench-") as tmp:
        settings = Settings(home=Path(tmp), database_url=url, broker_url="memory://",
                            artifact_root=Path(tmp) / "artifacts")
        ctx = Context(store=Store(Database(url)), config=_bench_config(7), clock=clock,
                      artifacts=ArtifactStore(Path(tmp) / "artifacts"), settings=settings, worker_id="bench")
        try:
            _seed(ctx, start, rng)
            floor = _floor(ctx)
            timings: list[int] = []
            verdicts: Counter[str] = Counter()
            clock_ns = time.perf_counter_ns
            warmup = 20
            training: list[tuple[datetime, str]] = []  # (finishes at, run id)
            approvals: list[int] = []  # an approval writes the run, the reservation and the message too
            others: list[int] = []
            for i in range(n + warmup):
                clock.advance(timedelta(seconds=rng.expovariate(1 / 420.0)))
                for done in [t for t in training if t[0] <= clock.now()]:
                    _finish(ctx, done[1], rng)
                    training.remove(done)
                rid = _new_request(ctx, rng, clock.now())
                t0 = clock_ns()
                res = decide_request(ctx, rid, reading)
                dt = clock_ns() - t0
                if res.verdict == "pending_approval" and rng.random() < 0.5:
                    resolve_pending(ctx, rid, approve=True, actor="bench", reason="bench")
                    t0 = clock_ns()
                    res = decide_request(ctx, rid, reading)
                    dt = clock_ns() - t0
                if i >= warmup:
                    timings.append(dt)
                    verdicts[res.verdict or "skipped"] += 1
                    (approvals if res.verdict == "approve" else others).append(dt)
                if res.verdict == "approve" and res.run_id:
                    # A training takes 10-40 minutes; requests meanwhile join it (coalesced).
                    training.append((clock.now() + timedelta(minutes=rng.uniform(10, 40)), res.run_id))
        finally:
            ctx.store.db.dispose()
            if ctx.store.db._engine is not None:
                ctx.store.db._engine.dispose()
    timings.sort()
    approvals.sort()
    others.sort()
    return {
        **floor,
        "task_approve_p50_ms": round(_pct(approvals, 0.50) / 1000.0, 3) if approvals else None,
        "task_other_p50_ms": round(_pct(others, 0.50) / 1000.0, 3) if others else None,
        "task_n": len(timings),
        "task_p50_ms": round(_pct(timings, 0.50) / 1000.0, 3),
        "task_p99_ms": round(_pct(timings, 0.99) / 1000.0, 3),
        "task_mean_ms": round(sum(timings) / len(timings) / 1e6, 3),
        "task_max_ms": round(timings[-1] / 1e6, 3),
        "task_verdicts": dict(sorted(verdicts.items())),
    }


def run() -> dict[str, Any]:
    """Both benchmarks: the pure ``decide`` (us) and the whole step on Postgres (ms)."""
    return {**run_pure(), **run_task()}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
