"""What the trading app pays for :class:`retrain.serving.ModelRouter`, and how fast a rollback reaches it.

``routes_per_s``
    :func:`retrain.serving.routes_to_canary` alone over 10,000 distinct keys
    (target >= 1,000,000 decisions/s).
``overhead_pct``
    The example model (StandardScaler + LogisticRegression on 8 features, fitted on
    the synthetic market) predicting single rows, through the router with reporting
    on (a canary at 10 %, routing keys from 5,000 accounts, the router listening for
    alias moves on a real database, the client in relay mode with a relay process
    that encodes every message as for the broker and discards it), against bare
    ``model.predict`` on the same rows, in the same run: each row predicted directly by
    the very model object the router serves it with (the canary's rows by the canary, as
    an app serving both versions without the router would). Calls alternate one by one
    (bare, routed, routed, bare, ...), paced at 5,000 calls a second or as fast as
    the CPU allows, so a change in the machine's speed falls on both sides alike
    (single-row latency moves by +-30 % over seconds here). Counted: the calling
    thread's CPU around each call, the CPU of our threads (their own clocks) and of
    the relay process, and the final flush; the percentage is all of it over the bare
    calls' CPU (target <= 2 %). Garbage-collection pauses count on the routed side
    wherever they fall (``router_gc_us``). The rows are split over 24 fresh routers,
    clients and relays, one after the other, and the figure is over all of them:
    where one instance's objects land in memory moves the model's own ``predict`` by
    up to +-2 us against the bare call (by far the largest noise here);
    ``overhead_pct_instances`` is each one's figure, ``overhead_pct_stderr`` the
    standard error of their mean. ``overhead_pct_thread_mode``
    is the same with the client's default flusher thread, ``overhead_pct_without_canary``
    with no rollout in progress (production serves every key); ``latency_overhead_pct``
    is the wall time of the call itself. ``router_own_warm_us_per_prediction`` is
    routing and reporting with a model that does nothing, back to back: what our
    code costs when nothing else evicts it from the CPU's caches.
``rollback_to_router_s``
    From the commit of an automatic rollback decision (``retrain.evaluate_rollouts``
    finding a canary 40 % worse) to the router serving production only; median and
    maximum over several trials, on Postgres when it is reachable
    (``RETRAIN_BENCH_PG_ADMIN_URL``), where the router follows by LISTEN/NOTIFY, else
    SQLite, where it polls every second. On Postgres the polling router is measured
    too (``rollback_to_router_poll_s``).

Run ``retrain bench router [--json]``.
"""

from __future__ import annotations

import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable
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


def _thread_cpu(threads: list[Any]) -> float:
    """CPU seconds the given threads have used (Linux: each thread's own CPU clock)."""
    return sum(time.clock_gettime(time.pthread_getcpuclockid(t.ident)) for t in threads
               if t is not None and t.is_alive())


def _interleaved(bare, routed, pairs: int, block: int, rate: int, background: Callable[[], float]) -> dict[str, Any]:
    """Alternate blocks of ``block`` calls of ``bare(i)`` and ``routed(i)`` over the same rows, paced at
    ``rate`` calls/s (as fast as possible when the CPU cannot keep up), and account for every CPU second.

    The two sides alternate every few milliseconds (and swap order every block), so a
    change in the machine's speed, which on these shared machines moves single-row
    latency by +-30 % over seconds, falls on both alike. The calling thread's CPU is
    read around each block; ``background()`` (the CPU seconds so far of our threads,
    read from their own CPU clocks, and of the relay process) is charged to the routed
    side, the only one that gives them work. (The process's CPU minus the caller's
    would also charge the BLAS pool's spinning after each bare ``predict`` to the router.)

    Garbage collection pauses are charged to the routed side wherever they fall: a
    collection runs in whichever call crosses the allocation threshold, usually a bare
    ``predict``, but the objects that fill the generations are the buffered rows
    (bare predictions alone free what they allocate and trigger almost none).
    """
    gc_in = {"bare": 0, "routed": 0}
    side = ["bare"]
    gc_started = [0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_started[0] = time.thread_time_ns()
        else:
            gc_in[side[0]] += time.thread_time_ns() - gc_started[0]

    gc.collect()  # what setting up left behind is not the router's
    gc.callbacks.append(on_gc)
    try:
        res = _alternate(bare, routed, pairs, block, rate, background, side)
    finally:
        gc.callbacks.remove(on_gc)
    caller, gc_moved = res.pop("caller"), gc_in["bare"] / 1e9
    n, bg, wall = res["n"], res.pop("background_s"), res.pop("wall")
    bare_s = caller["bare"] / 1e9 - gc_moved
    routed_s = caller["routed"] / 1e9 + gc_moved
    gc_s = (gc_in["bare"] + gc_in["routed"]) / 1e9
    res.update({
        "bare_us": 1e6 * bare_s / n,
        "extra_us": 1e6 * (routed_s - bare_s + bg) / n,
        "call_extra_us": 1e6 * (routed_s - bare_s) / n,
        "background_us": 1e6 * bg / n,
        "gc_us": 1e6 * gc_s / n,
        "overhead_pct": 100.0 * (routed_s - bare_s + bg) / bare_s,
        "latency_overhead_pct": 100.0 * (wall["routed"] - wall["bare"]) / wall["bare"],
    })
    return res


def _alternate(bare, routed, pairs: int, block: int, rate: int, background: Callable[[], float],
               side: list[str]) -> dict[str, Any]:
    period = 1.0 / rate
    blocks = max(1, pairs // block)
    caller = {"bare": 0, "routed": 0}
    wall = {"bare": 0, "routed": 0}
    t_start = time.perf_counter()
    bg0 = background()
    calls = 0
    for j in range(blocks):
        lo = j * block
        for name, fn in ((("bare", bare), ("routed", routed)) if j % 2 == 0 else (("routed", routed), ("bare", bare))):
            due = t_start + calls * period
            ahead = due - time.perf_counter()
            if ahead > 0.0005:
                time.sleep(ahead - 0.0002)
            side[0] = name
            w0, t0 = time.perf_counter_ns(), time.thread_time_ns()
            for i in range(lo, lo + block):
                fn(i)
            caller[name] += time.thread_time_ns() - t0
            wall[name] += time.perf_counter_ns() - w0
            calls += block
    n = blocks * block
    return {"n": n, "caller": caller, "wall": wall, "background_s": background() - bg0,
            "rate_per_s": 2 * n / (time.perf_counter() - t_start)}


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
        tx.versions.add(model=model, version=version, major=major, minor=minor, patch=patch, status="registered",
                        created_at=now, deleted_at=None, artifact_sha256=ref.sha256, artifact_size=ref.size,
                        bump_kind="minor", bump_reason="bench", parent_version=None, feature_schema=[],
                        params={}, metrics={})


class _Noop:
    """A model that costs nothing: what is left of a routed prediction is the router's own cost."""

    def predict(self, X):
        return _ZERO


_ZERO = np.zeros(1, dtype=np.int64)


def _child_cpu(pid: int | None) -> float:
    """CPU seconds of a child process: its Linux CPU-time clock (ns), else psutil (10 ms ticks)."""
    if pid is None:
        return 0.0
    try:
        return time.clock_gettime((~pid << 3) | 2)  # Linux: MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    except OSError:
        pass
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:  # gone: what it spent is no longer readable
        return 0.0
    return t.user + t.system


def overhead(pairs: int = 48_000, block: int = 1, rate: int = RATE_PER_S, instances: int = 24) -> dict[str, Any]:
    from retrain.artifacts import ArtifactStore
    from retrain.client import RetrainClient
    from retrain.client.relay import ProcessRelay
    from retrain.serving import ModelRouter, StoreRoutingReader

    prod, canary, X = _example_model()
    rows = [X[i % len(X)].reshape(1, -1) for i in range(pairs)]
    # Routing keys are accounts (5,000 of them, as the desk has); each prediction has an id of its own.
    keys = [f"ACCT-{i % 5000:05d}" for i in range(pairs)]
    pids = [f"{keys[i]}-{i}" for i in range(pairs)]
    labels = [int(i % 3 == 0) for i in range(pairs)]
    sent = {"rows": 0}

    def sink(task: str, payload: dict, queue: str, priority: int) -> None:
        # What kombu would do with the message body, minus the socket (as the relay's --dry-run).
        json.dumps([[payload], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
        sent["rows"] += len(payload["id"])

    now = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        store, kind = _store(Path(tmp), stack)
        artifacts = ArtifactStore(Path(tmp) / "artifacts")
        for model, (a, b) in (("direction", (prod, canary)), ("noop", (_Noop(), _Noop())), ("solo", (prod, None))):
            _register(store, artifacts, model, "1.0.0", a, now)
            with store.tx() as tx:
                tx.aliases.move(model, "production", "1.0.0", actor="bench", reason="bench", now=now)
            if b is not None:  # a rollout in progress: the canary at 10 %
                _register(store, artifacts, model, "1.1.0", b, now)
                with store.tx() as tx:
                    tx.aliases.move(model, "canary", "1.1.0", actor="bench", reason="bench", now=now, share_pct=10.0)

        def measure_one(model: str, lo: int, hi: int, mode: str, rate: int) -> dict[str, Any]:
            relay = ProcessRelay("memory://", dry_run=True) if mode == "relay" else None
            client = RetrainClient(sender=relay or sink, mode=mode, flush_interval_s=1.0, batch_size=5000)
            reader = StoreRoutingReader(store)
            router = ModelRouter(model, reader=reader, artifacts=artifacts, client=client,
                                 notices=reader.notices(model))
            # Its thread's start (connect, LISTEN, read the aliases once more) is a one-off, not a
            # prediction's cost: let it finish before the clock runs. Started beside the warm-up, it
            # waited for the GIL there and now and then burnt ~60 ms inside a measured instance.
            settle = time.monotonic() + 10
            while router.stats.refreshes < 2 and time.monotonic() < settle:
                time.sleep(0.005)
            time.sleep(0.05)
            report_outcome = client.report_outcome
            # The same predictions made directly: each row by the very model object the router
            # serves it with (a canary's rows by the canary), so that what differs is the router's.
            models = [router.route(keys[i])[1] for i in range(lo, hi)]
            try:
                # Both sides take the row's key, id and label in hand (an app has them either way),
                # so that what differs is the router's calls alone.
                def bare(j):
                    i = lo + j
                    row, _key, _pid, _label = rows[i], keys[i], pids[i], labels[i]
                    models[j].predict(row)

                def routed(j):
                    # The app's whole reporting: the prediction (by the router) and, later, its outcome.
                    i = lo + j
                    row, key, pid, label = rows[i], keys[i], pids[i], labels[i]
                    router.predict(row, key, prediction_id=pid)
                    report_outcome(model, pid, label, 0.001)

                def background() -> float:
                    child = relay.pid if relay is not None else None
                    return _thread_cpu([client._thread, router._thread]) + _child_cpu(child)

                _interleaved(bare, routed, min(hi - lo, 1000), block, rate, background)  # warm-up
                client.flush(10)
                res = _interleaved(bare, routed, hi - lo, block, rate, background)
                # The rows still buffered are the routed side's too: send them inside the account.
                b0, t0 = background(), time.thread_time()
                client.flush(10)
                res["extra_us"] += 1e6 * (time.thread_time() - t0 + background() - b0) / res["n"]
                res["overhead_pct"] = 100.0 * res["extra_us"] / res["bare_us"]
                res["refreshes"] = router.stats.refreshes
                res["reported"] = relay.stats.acked_rows if relay else sent["rows"]
                return res
            finally:
                router.close()
                client.close(10)

        def measure(model: str, n: int, mode: str, rate: int, instances: int) -> dict[str, Any]:
            """Over ``instances`` fresh routers and clients, ``n`` rows in all: where the objects of one
            land in memory moves the model's own predict by +-2 us next to the bare one (measured
            with the router alone, no reporting: -0.6 to +3.9 us a row from one instance to the
            next), so one instance is not a measurement."""
            per = n // instances
            runs = [measure_one(model, k * per, (k + 1) * per, mode, rate) for k in range(instances)]
            total = sum(r["n"] for r in runs)

            def mean(key: str) -> float:
                return sum(r[key] * r["n"] for r in runs) / total

            out: dict[str, Any] = {k: mean(k) for k in ("bare_us", "extra_us", "call_extra_us", "background_us",
                                                        "gc_us", "latency_overhead_pct", "rate_per_s")}
            out.update(n=total, overhead_pct=100.0 * out["extra_us"] / out["bare_us"],
                       instance_pct=[r["overhead_pct"] for r in runs],
                       instance_background_us=[r["background_us"] for r in runs],
                       refreshes=sum(r["refreshes"] for r in runs), reported=sum(r["reported"] for r in runs))
            return out

        relay = measure("direction", pairs, "relay", rate, instances)
        thread = measure("direction", pairs // 4, "thread", rate, 4)
        # No rollout: production serves every key.
        solo = measure("solo", pairs // 2, "relay", rate, max(1, instances // 2))
        # The router's own cost, with a model that does nothing, unpaced: routing and reporting, warm.
        own = measure("noop", pairs // 2, "relay", 10**9, 1)
        return {
            "overhead_pct": round(relay["overhead_pct"], 2),
            "overhead_pct_instances": [round(x, 2) for x in relay["instance_pct"]],
            # the standard error of the mean over the instances: what one run's figure is worth
            "overhead_pct_stderr": round(statistics.stdev(relay["instance_pct"]) / len(relay["instance_pct"]) ** 0.5, 2)
            if len(relay["instance_pct"]) > 1 else None,
            "overhead_pct_thread_mode": round(thread["overhead_pct"], 2),
            "overhead_pct_without_canary": round(solo["overhead_pct"], 2),
            "latency_overhead_pct": round(relay["latency_overhead_pct"], 2),
            "bare_cpu_us_per_prediction": round(relay["bare_us"], 2),
            "router_extra_us_per_prediction": round(relay["extra_us"], 2),
            "router_call_extra_us": round(relay["call_extra_us"], 2),
            "router_background_us": round(relay["background_us"], 2),
            "router_gc_us": round(relay["gc_us"], 2),
            "router_background_us_instances": [round(x, 2) for x in relay["instance_background_us"]],
            "thread_mode_extra_us_per_prediction": round(thread["extra_us"], 2),
            "thread_mode_background_us": round(thread["background_us"], 2),
            "router_own_warm_us_per_prediction": round(own["extra_us"], 2),
            "achieved_rate_per_s": round(relay["rate_per_s"]),
            "target_rate_per_s": rate,
            "predictions_relay_mode": relay["n"],
            "reported_rows": relay["reported"],
            "router_refreshes": relay["refreshes"],
            "router_db": kind,
        }


def rollback_latency(trials: int = 5, refresh_s: float = 1.0) -> dict[str, Any]:
    """Seconds from an automatic rollback's commit to the router serving production only."""
    from retrain.artifacts import ArtifactStore
    from retrain.config import parse_config
    from retrain.context import Context
    from retrain.core import lifecycle
    from retrain.core.clock import SystemClock
    from retrain.serving import ModelRouter, StoreRoutingReader
    from retrain.settings import Settings
    from retrain.steps.rollout_step import begin_rollout, evaluate_rollouts

    prod, canary, _ = _example_model()
    cfg = parse_config({"models": {"direction": {
        "entry_point": "retrain.examples.direction:train", "features": [f"f{i}" for i in range(8)],
        "validation": {"shadow_enabled": False}, "emergency": {"enabled": False}}}}, "<bench>")
    decision_s: list[float] = []
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
            tx.aliases.move("direction", "production", "1.0.0", actor="bench", reason="bench", now=now)
        modes = ("notify", "poll") if kind == "postgresql" else ("poll",)
        follow_s: dict[str, list[float]] = {m: [] for m in modes}
        n = 0
        for mode in modes:
            reader = StoreRoutingReader(store)
            router = ModelRouter("direction", reader=reader, artifacts=artifacts, refresh_s=refresh_s,
                                 notices=reader.notices("direction") if mode == "notify" else None)
            try:
                for t in range(trials):
                    n += 1
                    version = f"1.{n}.0"
                    now = ctx.now()
                    _register(store, artifacts, "direction", version, canary, now)
                    with store.tx() as tx:
                        # A run trained to this version, walked through its lifecycle like any other.
                        run = lifecycle.new_run(tx, model="direction", request_id=f"bench-{n}",
                                                decision_id=f"bench-{n}", trigger="manual", priority=3, now=now)
                        run = lifecycle.start_training(tx, run, owner="bench", now=now, lease_until=now)
                        run = lifecycle.to_validating(tx, run, version, attempt=run.attempt, owner="bench")
                        begin_rollout(tx, ctx, run, cfg.model("direction"), "1.0.0", now, "bench")
                    deadline = time.perf_counter() + 10 * refresh_s + 5
                    while router.routing.canary != version and time.perf_counter() < deadline:
                        time.sleep(0.005)
                    # A random phase of the router's poll: the decision does not wait for it.
                    time.sleep((t * 0.37 % 1.0) * refresh_s)
                    minute = ctx.now().replace(second=0, microsecond=0)
                    with store.tx() as tx:
                        tx.monitoring.add_buckets([
                            {"model": "direction", "version": "1.0.0", "minute": minute, "n": 2000, "tp": 600,
                             "tn": 600, "fp": 400, "fn": 400, "ret_sum": 0.0, "ret_sq_sum": 0.0, "unlabelled": 0},
                            {"model": "direction", "version": version, "minute": minute, "n": 300, "tp": 54,
                             "tn": 54, "fp": 96, "fn": 96, "ret_sum": 0.0, "ret_sq_sum": 0.0, "unlabelled": 0}])
                    t0 = time.perf_counter()
                    res = evaluate_rollouts(ctx)
                    t1 = time.perf_counter()
                    if [r.action for r in res.results] != ["rollback"]:
                        raise RuntimeError(f"expected a rollback, got {res.results}")
                    while router.routing.canary is not None and time.perf_counter() < t1 + 10 * refresh_s + 5:
                        time.sleep(0.001)
                    t2 = time.perf_counter()
                    if router.routing.canary is not None:
                        raise RuntimeError(f"the router still serves the canary {version} after {t2 - t1:.1f} s")
                    decision_s.append(t1 - t0)
                    follow_s[mode].append(t2 - t1)
            finally:
                router.close()
    first = follow_s[modes[0]]
    out = {
        "rollback_to_router_s": round(statistics.median(first), 3),
        "rollback_to_router_max_s": round(max(first), 3),
        "router_follows_by": modes[0],
        "rollback_decision_s": round(statistics.median(decision_s), 4),
        "router_refresh_s": refresh_s,
        "rollback_trials": trials,
        "rollback_db": kind,
    }
    if "notify" in modes:
        out["rollback_to_router_poll_s"] = round(statistics.median(follow_s["poll"]), 3)
        out["rollback_to_router_poll_max_s"] = round(max(follow_s["poll"]), 3)
    return out


def run() -> dict[str, Any]:
    return {**routes_per_second(), **overhead(), **rollback_latency()}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
