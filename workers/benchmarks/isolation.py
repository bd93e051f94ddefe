"""Separate resources: does a training slow ingest down? (issue 6, ADAPT-015)

Two real workers, each pinned to its own CPU with ``os.sched_setaffinity`` (a prefork
pool's children inherit it): ``celery worker -Q monitoring`` (solo) on CPU 0 and
``celery worker -Q training`` (prefork, one child) on CPU 1. Ingest is measured on a
pre-filled queue of ``batches`` batches of ``rows`` outcomes (8 features), in
``rounds`` turns: alone (the training frozen with SIGSTOP), then while the CPU-bound
training spins on the other CPU; medians are reported. The queue is
filled before the ingest worker starts, so neither the sender nor the worker's start
is timed: the rate is read from the database, between the first and the last batch's
``received_at``. Redis (private, on a free port) and Postgres (a throwaway database
from ``RETRAIN_BENCH_PG_ADMIN_URL``) are not pinned: on a 2-core machine they share
the cores with both workers, as they would on one node.

Figures: ``ingest_alone_per_s``, ``ingest_with_training_per_s``, ``ratio`` (with /
alone; 1.0 means no slowdown), the training's CPU seconds during the second
measurement (proof that it was burning), the pinning and the sizes.

Run ``retrain bench isolation [--json]``.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from retrain.tasks import INGEST, ROUTES, TRAIN

__all__ = ["run", "burn_train", "burn_data"]

ROOT = Path(__file__).resolve().parents[2]

_CONFIG = """
[models.direction]
entry_point = "retrain.examples.direction:train"
features = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"]

[models.burn]
entry_point = "workers.benchmarks.isolation:burn_train"
data_source = "workers.benchmarks.isolation:burn_data"
features = ["f0", "f1"]
[models.burn.params]
seconds = 600
"""


def burn_data(now: datetime, lookback: timedelta, params: dict):
    """A small labelled data set: the training's cost is in its fit, not its data."""
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 2))
    return X, (X[:, 0] > 0).astype(int), now.timestamp() - np.arange(500, 0, -1, dtype=float)


def burn_train(X, y, params: dict):
    """A CPU-bound fit: spins for ``params['seconds']`` (the benchmark stops it before)."""
    from sklearn.linear_model import LogisticRegression

    end = time.perf_counter() + float(params.get("seconds", 60))
    n = 0
    while time.perf_counter() < end:
        n += 1
    return LogisticRegression().fit(X, y)


def _worker(name: str, queue: str, pool: str, cpu: int | None, env: dict, tmp: Path) -> subprocess.Popen:
    def pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    log = open(tmp / f"{name}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queue, "-P", pool,
                             "-c", "1", "-n", f"bench-{name}@%h", "--loglevel=WARNING", "--without-gossip",
                             "--without-mingle", "--without-heartbeat"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=pin)


def _fill(send, tag: str, batches: int, rows: int) -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    X = rng.normal(size=(rows, 8)).round(6).tolist()
    pred = rng.integers(0, 2, size=rows).tolist()
    label = rng.integers(0, 2, size=rows).tolist()
    base = time.time() - 3600
    for b in range(batches):
        send(INGEST, {"v": 1, "batch_id": f"{tag}-{b:04d}-{uuid.uuid4().hex[:8]}", "model": "direction",
                                "id": [f"{tag}{b}-{i}" for i in range(rows)], "version": ["1.0.0"] * rows,
                                "ts": [base + b + i / rows for i in range(rows)], "x": X, "prediction": pred,
                                "label": label, "ret": [0.001] * rows}, "monitoring", 5)


def _rate(engine, tag: str, batches: int) -> float | None:
    from sqlalchemy import text

    with engine.connect() as c:
        n, first, last, accepted = c.execute(text(
            "SELECT count(*), min(received_at), max(received_at), coalesce(sum(accepted), 0) FROM ingested_batches "
            "WHERE batch_id LIKE :tag"), {"tag": f"{tag}-%"}).one()
    if n < batches:
        return None
    span = (last - first).total_seconds()
    return accepted * (n - 1) / n / span if span > 0 else float("inf")


def _measure(engine, env: dict, tmp: Path, send, tag: str, batches: int, rows: int, cpu: int | None,
             timeout_s: float) -> float:
    from workers.benchmarks.ingest import _stop

    _fill(send, tag, batches, rows)
    worker = _worker(f"ingest-{tag}", "monitoring", "solo", cpu, env, tmp)
    try:
        deadline = time.monotonic() + timeout_s
        while (rate := _rate(engine, tag, batches)) is None:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ingest did not finish:\n{(tmp / f'ingest-{tag}.log').read_text()[-3000:]}")
            time.sleep(0.1)
        return rate
    finally:
        _stop(worker)


def run(batches: int = 60, rows: int = 2000, rounds: int = 3, timeout_s: float = 180.0) -> dict[str, Any]:
    import psutil
    from sqlalchemy import create_engine

    from retrain.client import kombu_sender
    from retrain.core import lifecycle
    from retrain.storage.db import Database
    from retrain.storage.repo import Store
    from workers.benchmarks.ingest import _create_db, _drop_db, _start_redis

    cpus = sorted(os.sched_getaffinity(0))
    ingest_cpu, train_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    tmp = Path(tempfile.mkdtemp(prefix="retrain-bench-isolation-"))
    (tmp / "retrain.toml").write_text(_CONFIG)
    redis_proc, broker = _start_redis(tmp)
    db_name, db_url = _create_db()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    env.update(RETRAIN_DATABASE_URL=db_url, RETRAIN_BROKER_URL=broker, RETRAIN_CONFIG=str(tmp / "retrain.toml"),
               RETRAIN_HOME=str(tmp), RETRAIN_LEASE_S="30", PYTHONUNBUFFERED="1")
    engine = create_engine(db_url)
    send = kombu_sender(broker)
    trainer = None
    try:
        # Warm up the tables (and the disk cache) once, untimed.
        _measure(engine, env, tmp, send, "warm", 5, rows, ingest_cpu, timeout_s)
        trainer = _worker("train", "training", "prefork", train_cpu, env, tmp)
        store = Store(Database(db_url))
        with store.tx() as tx:
            run_id = lifecycle.new_run(tx, model="burn", request_id=str(uuid.uuid4()), decision_id=str(uuid.uuid4()),
                                       trigger="manual", priority=3, now=datetime.now(timezone.utc)).id
        send(TRAIN, {"v": 1, "run_id": run_id}, ROUTES[TRAIN], 3)
        deadline = time.monotonic() + timeout_s
        while True:
            with store.tx() as tx:
                run = tx.runs.get(run_id)
                assert run is not None
                if run.stage == "fitting":
                    break
            if trainer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the training did not start:\n{(tmp / 'train.log').read_text()[-3000:]}")
            time.sleep(0.1)
        store.db.dispose()
        child = psutil.Process(trainer.pid).children()[0]
        # Alone and beside the training, in turns (the training is frozen with SIGSTOP while ingest
        # runs alone), so that the machine's own drift hits both sides alike.
        alone, busy, shares = [], [], []
        for r in range(rounds):
            child.suspend()
            alone.append(_measure(engine, env, tmp, send, f"alone{r}", batches, rows, ingest_cpu, timeout_s))
            child.resume()
            cpu0, t0 = sum(child.cpu_times()[:2]), time.perf_counter()
            busy.append(_measure(engine, env, tmp, send, f"busy{r}", batches, rows, ingest_cpu, timeout_s))
            shares.append((sum(child.cpu_times()[:2]) - cpu0) / (time.perf_counter() - t0))
        a, b = statistics.median(alone), statistics.median(busy)
        return {
            "ingest_alone_per_s": round(a),
            "ingest_with_training_per_s": round(b),
            "ratio": round(b / a, 3),
            "ratio_per_round": [round(y / x, 3) for x, y in zip(alone, busy)],
            "training_cpu_share_during_measure": round(statistics.median(shares), 3),
            "ingest_cpu": ingest_cpu,
            "training_cpu": train_cpu,
            "cpus": len(cpus),
            "rounds": rounds,
            "batches": batches,
            "rows_per_batch": rows,
        }
    finally:
        if trainer is not None and trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)  # a warm shutdown would wait for the endless fit
            trainer.wait(10)
        engine.dispose()
        redis_proc.terminate()
        redis_proc.wait(10)
        _drop_db(db_name)
        shutil.rmtree(tmp, ignore_errors=True)
