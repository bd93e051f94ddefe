"""What the trading app pays for :class:`retrain.serving.ModelRouter`, and how fast a rollback reaches it.

``routes_per_s``
    :func:`retrain.serving.routes_to_canary` alone over 10,000 distinct keys
    (target >= 1,000,000 decisions/s).
``overhead_pct``
    The example model (StandardScaler + LogisticRegression on 8 features, fitted on
    the synthetic market) predicting single rows at the trading app's 5,000
    predictions/s, through the router with reporting on (a canary at 10 %, the
    refresh thread polling a real database every second, a RetrainClient whose
    flusher batches and encodes every row as for the broker, which is replaced by a
    sink) against bare ``model.predict`` on the same rows, in the same run, in
    alternating rounds. It is the extra CPU time of the whole process, all threads
    included, per prediction (target <= 2 %). ``latency_overhead_pct`` is the same
    for the time of the call itself.
``rollback_to_router_s``
    From the commit of an automatic rollback decision (``retrain.evaluate_rollouts``
    finding a canary 40 % worse) to the router, polling every second, serving
    production only; median and maximum over several trials, on Postgres when it
    is reachable (``RETRAIN_BENCH_PG_ADMIN_URL``), else SQLite.

Run ``retrain bench router [--json]``.
"""

from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["run", "routes_per_second", "overhead", "rollback_latency"]

RATE_PER_S = 5000


def routes_per_second(n: int = 2_000_000) -> dict[str, Any]:
    from retrain.serving import routes_to_canary

    keys = [f"ACCT-{i:05d}" for i in range(10_000)]
    reps = n // len(keys)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            for k in keys:
                routes_to_canary(k, 25.0)
        best = max(best, reps * len(keys) / (time.perf_counter() - t0))
    return {"routes_per_s": round(best)}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _paced(fn, n: int, rate: int) -> tuple[float, float, float]:
    """Call ``fn(i)`` for i in range(n) at ``rate`` calls/s (as fast as possible if the CPU cannot keep up);
    returns (CPU s of the whole process, summed call s, wall s)."""
    period = 1.0 / rate
    cpu0, wall0 = _cpu(), time.perf_counter()
    busy = 0.0
    for i in range(n):
        due = wall0 + i * period
        now = time.perf_counter()
        if due - now > 0.0005:
            time.sleep(due - now - 0.0002)
        t = time.perf_counter()
        fn(i)
        busy += time.perf_counter() - t
    return _cpu() - cpu0, busy, time.perf_counter() - wall0


def _example_model():
    from retrain.examples.direction import market_from_params, train

    m = market_from_params({})
    t0 = datetime(2026, 1, 5, tzinfo=timezone.utc)
    fit = m.rows(t0 - timedelta(hours=8), t0)
    live = m.rows(t0, t0 + timedelta(hours=6))
    return train(fit.X, fit.y, {}), train(fit.X[::2], fit.y[::2], {}), live.X


def _store(tmp: Path, stack: ExitStack) -> tuple[Any, str]:
    """A migrated database for the router to poll: a throwaway Postgres if reachable, else SQLite."""
    from retrain.storage.db import Database, make_engine
    from retrain.storage.repo import Store
    from retrain.storage.schema import upgrade

    try:
        from retrain.benchmarks.decision import throwaway_database

        url = stack.enter_context(throwaway_database())
        kind = "postgresql"
    except Exception:  # no Postgres here: the embedded default
        url = f"sqlite:///{tmp / 'bench.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        kind = "sqlite"
    db = Database(url)
    stack.callback(db.dispose)
    return Store(db), kind


def _register(store, artifacts, model: str, version: str, est, now: datetime) -> None:
    ref = artifacts.put_object(est)
    major, minor, patch = (int(p) for p in version.split("."))
    with store.tx() as tx:
        tx.add_version(model=model, version=version, major=major, minor=minor, patch=patch, status="registered",
                       created_at=now, deleted_at=None, artifact_sha256=ref.sha256, artifact_size=ref.size,
                       bump_kind="minor", bump_reason="bench", parent_version=None, feature_schema=[],
                       params={}, metrics={})


class _Noop:
    """A model that costs nothing: what is left of a routed prediction is the router's own cost."""

    def predict(self, X):
        return _ZERO


_ZERO = np.zeros(1, dtype=np.int64)


def overhead(seconds_per_round: float = 0.5, rounds: int = 16, rate: int = RATE_PER_S) -> dict[str, Any]:
    from retrain.artifacts import ArtifactStore
    from retrain.client import RetrainClient
    from retrain.serving import ModelRouter, StoreRoutingReader

    prod, canary, X = _example_model()
    n = int(seconds_per_round * rate)
    rows = [X[i % len(X)].reshape(1, -1) for i in range(n)]
    keys = [f"ACCT-{i % 5000:05d}-{i}" for i in range(n)]
    labels = [int(i % 3 == 0) for i in range(n)]
    sent = {"rows": 0, "bytes": 0}

    def sink(task: str, payload: dict, queue: str, priority: int) -> None:
        # What kombu would do with the message body, minus the socket.
        sent["bytes"] += len(json.dumps([[payload], {}, {}]))
        sent["rows"] += len(payload["id"])

    now = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        store, kind = _store(Path(tmp), stack)
        artifacts = ArtifactStore(Path(tmp) / "artifacts")
        for model, (a, b) in (("direction", (prod, canary)), ("noop", (_Noop(), _Noop()))):
            _register(store, artifacts, model, "1.0.0", a, now)
            _register(store, artifacts, model, "1.1.0", b, now)
            with store.tx() as tx:
                tx.move_alias(model, "production", "1.0.0", actor="bench", reason="bench", now=now)
                tx.move_alias(model, "canary", "1.1.0", actor="bench", reason="bench", now=now, share_pct=10.0)
        client = RetrainClient(sender=sink, flush_interval_s=1.0, batch_size=5000)
        router = ModelRouter("direction", reader=StoreRoutingReader(store), artifacts=artifacts, client=client)
        noop_router = ModelRouter("noop", reader=StoreRoutingReader(store), artifacts=artifacts, client=client)
        stack.callback(client.close)
        stack.callback(router.close)
        stack.callback(noop_router.close)
        report_outcome = client.report_outcome

        def bare(i):
            prod.predict(rows[i])

        def routed(i):
            # The app's whole reporting: the prediction (by the router) and, later, its outcome.
            router.predict(rows[i], keys[i], prediction_id=keys[i])
            report_outcome("direction", keys[i], labels[i], 0.001)

        _paced(bare, n // 4, rate)  # warm-up both paths
        _paced(routed, n // 4, rate)
        cpu = {"bare": [], "router": []}
        busy = {"bare": 0.0, "router": 0.0}
        wall = 0.0
        for r in range(rounds):
            # Alternate the order: drift in the machine's load falls on both sides.
            for name, fn in ((("bare", bare), ("router", routed)) if r % 2 == 0 else (("router", routed), ("bare", bare))):
                c, b, w = _paced(fn, n, rate)
                cpu[name].append(c)
                busy[name] += b
                wall += w if name == "router" else 0.0
        ratios = [cr / cb - 1.0 for cr, cb in zip(cpu["router"], cpu["bare"])]

        # The router's own cost, measured with a model that does nothing.
        noop = _Noop()
        m = 50_000
        c0 = _cpu()
        for i in range(m):
            noop.predict(rows[i % n])
        c_bare = _cpu() - c0
        c0 = _cpu()
        for i in range(m):
            k = keys[i % n]
            noop_router.predict(rows[i % n], k, prediction_id=k)
            report_outcome("noop", k, 1, 0.001)
        time.sleep(2.2)  # let the flusher take its share of the CPU for these rows
        c_router = _cpu() - c0 - _idle_cpu(2.2)
        client.flush(10)
        total = rounds * n
        bare_us = 1e6 * sum(cpu["bare"]) / total
        own_us = 1e6 * (c_router - c_bare) / m
        return {
            "overhead_pct": round(100.0 * statistics.median(ratios), 2),
            "overhead_pct_rounds": [round(100.0 * x, 2) for x in ratios],
            "latency_overhead_pct": round(100.0 * (busy["router"] - busy["bare"]) / busy["bare"], 2),
            "bare_cpu_us_per_prediction": round(bare_us, 2),
            "router_cpu_us_per_prediction": round(1e6 * sum(cpu["router"]) / total, 2),
            "router_own_us_per_prediction": round(own_us, 2),
            "router_own_pct_of_bare": round(100.0 * own_us / bare_us, 2),
            "achieved_rate_per_s": round(total / wall),
            "target_rate_per_s": rate,
            "predictions_per_mode": total,
            "reported_rows": sent["rows"],
            "router_refreshes": router.stats.refreshes,
            "router_db": kind,
        }


def _idle_cpu(seconds: float) -> float:
    """CPU the process spends while idle for ``seconds`` (the refresh threads, the flusher's timer)."""
    c0 = _cpu()
    time.sleep(seconds)
    return _cpu() - c0


def rollback_latency(trials: int = 5, refresh_s: float = 1.0) -> dict[str, Any]:
    """Seconds from an automatic rollback's commit to the router serving production only."""
    from retrain.artifacts import ArtifactStore
    from retrain.clock import SystemClock
    from retrain.config import parse_config
    from retrain.context import Context
    from retrain.serving import ModelRouter, StoreRoutingReader
    from retrain.settings import Settings
    from retrain.steps.rollout_step import begin_rollout, evaluate_rollouts

    prod, canary, _ = _example_model()
    cfg = parse_config({"models": {"direction": {
        "entry_point": "retrain.examples.direction:train", "features": [f"f{i}" for i in range(8)],
        "validation": {"shadow_enabled": False}, "emergency": {"enabled": False}}}}, "<bench>")
    decision_s: list[float] = []
    follow_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        store, kind = _store(Path(tmp), stack)
        artifacts = ArtifactStore(Path(tmp) / "artifacts")
        settings = Settings(home=Path(tmp), database_url=str(store.db.url), broker_url="memory://",
                            artifact_root=Path(tmp) / "artifacts")
        ctx = Context(store=store, config=cfg, clock=SystemClock(), artifacts=artifacts, settings=settings,
                      worker_id="bench")
        now = ctx.now()
        _register(store, artifacts, "direction", "1.0.0", prod, now)
        with store.tx() as tx:
            tx.move_alias("direction", "production", "1.0.0", actor="bench", reason="bench", now=now)
        router = ModelRouter("direction", reader=StoreRoutingReader(store), artifacts=artifacts,
                             refresh_s=refresh_s)
        stack.callback(router.close)
        for t in range(trials):
            version = f"1.{t + 1}.0"
            now = ctx.now()
            _register(store, artifacts, "direction", version, canary, now)
            with store.tx() as tx:
                run_id = tx.create_run(model="direction", request_id=f"bench-{t}", decision_id=f"bench-{t}",
                                       trigger="manual", priority=3, now=now)
            with store.tx() as tx:
                run = tx.run(run_id)
                run.candidate_version = version
                begin_rollout(tx, ctx, run, cfg.model("direction"), "1.0.0", now, "bench")
            deadline = time.perf_counter() + 10 * refresh_s + 5
            while router.routing.canary != version and time.perf_counter() < deadline:
                time.sleep(0.005)
            # A random phase of the router's poll: the decision does not wait for it.
            time.sleep((t * 0.37 % 1.0) * refresh_s)
            minute = ctx.now().replace(second=0, microsecond=0)
            with store.tx() as tx:
                tx.add_buckets([
                    {"model": "direction", "version": "1.0.0", "minute": minute, "n": 2000, "tp": 600, "tn": 600,
                     "fp": 400, "fn": 400, "ret_sum": 0.0, "ret_sq_sum": 0.0, "unlabelled": 0},
                    {"model": "direction", "version": version, "minute": minute, "n": 300, "tp": 54, "tn": 54,
                     "fp": 96, "fn": 96, "ret_sum": 0.0, "ret_sq_sum": 0.0, "unlabelled": 0}])
            t0 = time.perf_counter()
            res = evaluate_rollouts(ctx)
            t1 = time.perf_counter()
            if [r.action for r in res.results] != ["rollback"]:
                raise RuntimeError(f"expected a rollback, got {res.results}")
            while router.routing.canary is not None and time.perf_counter() < t1 + 10 * refresh_s + 5:
                time.sleep(0.001)
            t2 = time.perf_counter()
            decision_s.append(t1 - t0)
            follow_s.append(t2 - t1)
    return {
        "rollback_to_router_s": round(statistics.median(follow_s), 3),
        "rollback_to_router_max_s": round(max(follow_s), 3),
        "rollback_decision_s": round(statistics.median(decision_s), 4),
        "router_refresh_s": refresh_s,
        "rollback_trials": trials,
        "rollback_db": kind,
    }


def run() -> dict[str, Any]:
    return {**routes_per_second(), **overhead(), **rollback_latency()}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
