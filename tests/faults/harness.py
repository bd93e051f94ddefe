"""What the fault tests share: a private redis-server that can be stopped and restarted, a
private Postgres cluster that can be stopped, a model file of slow test models, a fit held
until the test releases it (``HELD``), the environment of short leases and intervals the
workers run with, and helpers to queue runs and read their fate from Postgres (the truth),
never from the broker.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, start_redis
from tests.procs import retrain_env
from tests.runs import make_run

__all__ = ["RedisServer", "PrivatePostgres", "write_model_file", "fault_env", "queue_runs", "publish_outbox",
           "runs", "versions", "held_slots", "holder", "audit", "store_for", "stop_all", "FINAL_RUN", "FINAL_REQUEST", "SLOW",
           "PERMISSIVE_POLICY", "HELD", "held_train"]

FINAL_RUN = ("done", "rejected", "failed", "dead", "cancelled")
FINAL_REQUEST = ("approved", "coalesced", "rejected", "superseded")
SLOW = "tests.faults.slow_model"
HELD = "tests.faults.harness:held_train"

# Nothing in the policy stands in the way: the fault tests are about delivery, not decisions.
PERMISSIVE_POLICY = {
    "approval_days": 0, "cooldown_hours": 0, "max_runs_per_model_per_day": 100000, "daily_budget_usd": 1e6,
    "monthly_budget_usd": 1e7, "min_roi": 0.0, "offpeak_start": "00:00", "offpeak_end": "23:59",
    "min_free_memory_mb": 0.0, "max_cpu_load_pct": 100000.0, "min_free_disk_mb": 0.0,
}


def held_train(X, y, params):
    """A model's fit that runs until the test creates the file ``params["release"]``, so the
    test decides when it ends instead of racing a fixed duration; it logs ``start``/``end``
    like :mod:`tests.faults.slow_model` (``params["log"]``). It gives up with an error after
    ``max_seconds`` (600), should the test never release it."""
    from tests.faults.slow_model import train

    release, log = Path(params["release"]), params.get("log")

    def note(what: str) -> None:
        if log:
            with open(log, "a") as f:
                f.write(f"{what} {os.getpid()} {time.time():.6f}\n")

    note("start")
    deadline = time.monotonic() + float(params.get("max_seconds", 600))
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never released the fit ({release} does not exist)")
        time.sleep(0.05)
    model = train(X, y, {})
    note("end")
    return model


class RedisServer:
    """A redis-server of one test's own, without persistence: a restart forgets everything."""

    def __init__(self, tmp: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is needed by the fault tests")
        self.port, self.dir = free_port(), tmp
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = start_redis(self.port, self.dir)
        assert self.proc is not None, f"redis-server did not start on port {self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # no chance to save anything: what it held is gone
            self.proc.wait(10)
        self.proc = None

    def client(self):
        import redis

        return redis.Redis(port=self.port, socket_connect_timeout=1)


class PrivatePostgres:
    """A Postgres cluster of one test's own (initdb into a temporary directory), so the test
    can stop it without touching the machine's shared cluster."""

    BIN = Path("/usr/lib/postgresql/15/bin")

    def __init__(self, tmp: Path) -> None:
        if not (self.BIN / "initdb").exists():
            pytest.fail(f"{self.BIN}/initdb is needed to run a private Postgres cluster")
        import tempfile

        # Outside pytest's tmp_path: its parents are private to root, and Postgres runs as postgres.
        self.dir = Path(tempfile.mkdtemp(prefix="retrain-pg-"))
        shutil.chown(self.dir, "postgres")
        self.port = free_port()
        self._as_postgres([str(self.BIN / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres"])
        self.start()
        self._as_postgres([str(self.BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c",
                           "CREATE DATABASE retrain"])

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/retrain"

    def _as_postgres(self, argv: list[str]) -> None:
        import os

        cmd = argv if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *argv]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{' '.join(argv[:2])} failed: {out.stdout}\n{out.stderr}"

    def start(self) -> None:
        self._as_postgres([str(self.BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
                           "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])

    def stop(self) -> None:
        self._as_postgres([str(self.BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop"])

    def close(self) -> None:
        try:
            self.stop()
        except AssertionError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_model_file(path: Path, models: dict[str, dict[str, Any]], policy: dict[str, Any] | None = None) -> Path:
    """A model file of slow test models: ``models[name]`` holds ``params`` plus optional
    ``depends_on`` and ``entry_point``. Triggers are off: runs come from the tests."""
    lines = ["[policy]"] + [f"{k} = {_toml_value(v)}" for k, v in (policy or PERMISSIVE_POLICY).items()]
    for name, m in models.items():
        m = dict(m)
        lines += ["", f"[models.{name}]", f'entry_point = "{m.pop("entry_point", SLOW + ":train")}"',
                  f'data_source = "{SLOW}:history"', 'features = ["f0", "f1"]', "lookback_hours = 1"]
        if "depends_on" in m:
            lines.append(f"depends_on = {_toml_value(m.pop('depends_on'))}")
        lines += [f"[models.{name}.params]"] + [f"{k} = {_toml_value(v)}" for k, v in m.pop("params", {}).items()]
        lines += [f"[models.{name}.thresholds]", "min_samples = 1000000000",
                  f"[models.{name}.drift]", "enabled = false", f"[models.{name}.emergency]", "enabled = false",
                  f"[models.{name}.validation]", "min_improvement = 0.0", "shadow_min_hours = 0.0",
                  "shadow_max_hours = 0.0", "shadow_min_rows = 0",
                  f"[models.{name}.rollout]", "stages = [100.0]", "stage_min_minutes = 0.0", "stage_min_samples = 0"]
        assert not m, f"unknown keys for a test model: {sorted(m)}"
    path.write_text("\n".join(lines) + "\n")
    return path


def fault_env(db_url: str, broker_url: str, tmp: Path, config: Path, **overrides: Any) -> dict[str, str]:
    """Short leases and intervals, so a fault is repaired within seconds."""
    values = {
        "RETRAIN_DATABASE_URL": db_url, "RETRAIN_BROKER_URL": broker_url, "RETRAIN_CONFIG": str(config),
        "RETRAIN_HOME": str(tmp), "RETRAIN_ARTIFACT_ROOT": str(tmp / "artifacts"),
        "RETRAIN_LEASE_S": "3", "RETRAIN_RECONCILE_INTERVAL_S": "1", "RETRAIN_RELAY_INTERVAL_S": "1",
        "RETRAIN_REQUEUE_AFTER_S": "6", "RETRAIN_SWEEP_INTERVAL_S": "1", "RETRAIN_RETENTION_INTERVAL_S": "3600",
        "RETRAIN_TRAINING_SLOTS": "2", "RETRAIN_MAX_ATTEMPTS": "3",
    }
    values.update({f"RETRAIN_{k.upper()}": str(v) for k, v in overrides.items()})
    return retrain_env(**values)


def store_for(db_url: str):
    from retrain.storage.db import Database
    from retrain.storage.repo import Store

    return Store(Database(db_url))


def queue_runs(store, specs: list[tuple[str, str, int]]) -> list[str]:
    """Queue one run per (model, trigger, priority), each with its retrain.train message in
    the outbox, as an approved decision leaves them. Returns the run ids in order."""
    ids = []
    for model, trigger, priority in specs:
        now = datetime.now(timezone.utc)
        with store.tx() as tx:
            rid = make_run(tx, model, now, trigger=trigger, priority=priority).id
            tx.outbox.enqueue("retrain.train", {"v": 1, "run_id": rid}, now, priority=priority)
        ids.append(rid)
        time.sleep(0.002)  # distinct creation times: runs are ordered by them
    return ids


def publish_outbox(store, broker_url: str) -> int:
    """Relay the outbox to the broker as the workers' relay does (kombu, by task name)."""
    from retrain.client import kombu_sender
    from retrain.outbox import relay
    from retrain.queues import ROUTES

    send = kombu_sender(broker_url)
    return relay(store, lambda m: send(m.task, m.payload, ROUTES[m.task], m.priority), datetime.now(timezone.utc))


def runs(store, ids: list[str] | None = None) -> list:
    with store.tx() as tx:
        rows = tx.runs.newest(limit=10_000)
    return [r for r in rows if ids is None or r.id in ids]


def versions(store, model: str) -> list[str]:
    with store.tx() as tx:
        return [v.version for v in tx.versions.all(model)]


def held_slots(store) -> list:
    from retrain import slots

    with store.tx() as tx:
        return slots.holders(tx, datetime.now(timezone.utc))


def stop_all(procs: list) -> None:
    """Tear down: kill outright (a graceful stop is what the shutdown test is about, not this)."""
    for p in procs:
        p.stop(signal.SIGKILL)


def holder(store, run_id: str, workers: list):
    """The worker process whose pool child holds the run's lease (the owner is 'host:pid')."""
    import psutil

    owner = runs(store, [run_id])[0].lease_owner
    pid = int(owner.rsplit(":", 1)[1])
    family = {pid, *(p.pid for p in psutil.Process(pid).parents())}
    return next(w for w in workers if w.p.pid in family)


def audit(store, model: str | None = None) -> list[str]:
    with store.tx() as tx:
        return [e.message for e in tx.audit.events(model, limit=100_000)]
