"""Ingest throughput end to end: client -> Redis -> a real ``celery worker -Q monitoring`` -> Postgres.

Everything is started here and torn down after: a private ``redis-server`` on a free
port, a throwaway Postgres database (created from the admin URL
``RETRAIN_BENCH_PG_ADMIN_URL``, default ``postgresql+psycopg2://postgres@127.0.0.1:5432/postgres``)
migrated to head, and one worker process (solo pool) consuming ``monitoring``.
:class:`~retrain.client.RetrainClient` reports ``outcomes`` labelled rows of 8
features as fast as the calling thread can; the clock stops when the database
holds every one of them (the ``accepted`` counts of ``ingested_batches``).

The model file is the default one (sample rate 0.1): the worker writes the per-minute
buckets and a 10 % feature sample, as in production. Figures: ``outcomes_per_s``,
``sent`` and ``stored`` (equal, or the run failed), ``worker_rss_mb`` (resident
memory of the worker process at the end), the mean cost of a ``report`` call on the
trading thread while the pipeline runs, and the batches.

Run ``retrain bench ingest [--json]``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["run"]

ROOT = Path(__file__).resolve().parents[2]
ADMIN_URL = os.environ.get("RETRAIN_BENCH_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")

_CONFIG = """
[models.direction]
entry_point = "retrain.examples.direction:train"
features = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_redis(tmp: Path) -> tuple[subprocess.Popen, str]:
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not on PATH")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=1)
    for _ in range(200):
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def _create_db() -> tuple[str, str]:
    from sqlalchemy import create_engine, text

    name = f"retrain_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    from retrain.storage.db import make_engine
    from retrain.storage.schema import upgrade

    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return name, url


def _drop_db(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def _stored(engine) -> int:
    from sqlalchemy import text

    with engine.connect() as c:
        return int(c.execute(text("SELECT coalesce(sum(accepted), 0) FROM ingested_batches")).scalar() or 0)


def run(outcomes: int = 1_000_000, batch_size: int = 5000, timeout_s: float = 300.0) -> dict[str, Any]:
    import numpy as np
    import psutil
    from sqlalchemy import create_engine

    from retrain.client import RetrainClient, kombu_sender

    tmp = Path(tempfile.mkdtemp(prefix="retrain-bench-ingest-"))
    (tmp / "retrain.toml").write_text(_CONFIG)
    redis_proc, broker = _start_redis(tmp)
    db_name, db_url = _create_db()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    env.update(RETRAIN_DATABASE_URL=db_url, RETRAIN_BROKER_URL=broker, RETRAIN_CONFIG=str(tmp / "retrain.toml"),
               RETRAIN_HOME=str(tmp), PYTHONUNBUFFERED="1")
    log = open(tmp / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "monitoring",
                               "-P", "solo", "-c", "1", "-n", "bench-ingest@%h", "--loglevel=WARNING",
                               "--without-gossip", "--without-mingle", "--without-heartbeat"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    engine = create_engine(db_url)
    client = None
    try:
        rng = np.random.default_rng(0)
        pool = rng.normal(size=(10_000, 8)).tolist()
        labels = rng.integers(0, 2, size=10_000).tolist()
        preds = rng.integers(0, 2, size=10_000).tolist()
        rets = (rng.normal(size=10_000) * 1e-3).tolist()
        t_base = time.time()

        client = RetrainClient(sender=kombu_sender(broker), batch_size=batch_size, flush_interval_s=0.2,
                               max_buffer=outcomes + 1, max_waiting_batches=outcomes // batch_size + 10)
        # Warm up: the worker is up and the tables are hot before the clock starts.
        for i in range(batch_size):
            client.report("direction", f"w{i}", pool[i], preds[i], "1.0.0", labels[i], rets[i], t_base)
        client.flush(30)
        _wait(lambda: _stored(engine) >= batch_size, 60, worker, tmp)
        base = _stored(engine)
        procs = {"worker": psutil.Process(worker.pid), "client": psutil.Process(),
                 "redis": psutil.Process(redis_proc.pid)}
        cpu0 = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}

        t0 = time.perf_counter()
        report = client.report
        for i in range(outcomes):
            j = i % 10_000
            # An int id on purpose: the cheapest to make, so the client's own cost is what is measured.
            report("direction", i, pool[j], preds[j], "1.0.0", labels[j], rets[j], t_base + i * 1e-4)  # type: ignore[arg-type]
        t_reported = time.perf_counter()
        client.flush(timeout_s)
        _wait(lambda: _stored(engine) - base >= outcomes, timeout_s, worker, tmp, every=0.02)
        t1 = time.perf_counter()
        cpu = {k: sum(p.cpu_times()[:2]) - cpu0[k] for k, p in procs.items()}
        stored = _stored(engine) - base
        rss = psutil.Process(worker.pid).memory_info().rss / 2**20
        stats = client.stats
        return {
            "outcomes_per_s": round(outcomes / (t1 - t0)),
            "sent": stats.sent_rows - batch_size,
            "stored": stored,
            "dropped": stats.dropped_rows,
            "seconds": round(t1 - t0, 3),
            "worker_rss_mb": round(rss, 1),
            "report_call_mean_us_under_load": round((t_reported - t0) / outcomes * 1e6, 3),
            # CPU per outcome of each process (Postgres' own backends are not counted)
            "worker_cpu_us_per_outcome": round(cpu["worker"] / outcomes * 1e6, 3),
            "client_cpu_us_per_outcome": round(cpu["client"] / outcomes * 1e6, 3),
            "redis_cpu_us_per_outcome": round(cpu["redis"] / outcomes * 1e6, 3),
            "batch_size": batch_size,
            "batches": stats.sent_batches - 1,
            "pool": "solo",
            "cpus": os.cpu_count(),
        }
    finally:
        if client is not None:
            client.close(5)
        engine.dispose()
        _stop(worker)
        log.close()
        redis_proc.terminate()
        redis_proc.wait(10)
        _drop_db(db_name)
        shutil.rmtree(tmp, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def _wait(check, timeout: float, worker: subprocess.Popen, tmp: Path, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if worker.poll() is not None:
            raise RuntimeError(f"the ingest worker exited:\n{(tmp / 'worker.log').read_text()[-3000:]}")
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout}s; worker log:\n{(tmp / 'worker.log').read_text()[-3000:]}")
