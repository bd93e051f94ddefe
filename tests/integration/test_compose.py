"""docker-compose.yml, checked without a Docker engine: parse it, then run every
retrain service's own command as a process against the real local Redis and Postgres."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLE_CONFIG, ROOT, free_port
from tests.procs import Proc, retrain_env, wait_for

pytestmark = pytest.mark.timeout(180)
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
RETRAIN_SERVICES = ["migrate", "beat", "worker-monitoring", "worker-training", "worker-validation", "flower"]


def test_compose_describes_the_deployment():
    services = COMPOSE["services"]
    assert set(RETRAIN_SERVICES) | {"redis", "postgres"} <= set(services)
    # training runs on its own service and consumes only its queue
    assert services["worker-training"]["command"][services["worker-training"]["command"].index("-Q") + 1] == "training"
    queues = set()
    for name in ("worker-monitoring", "worker-training", "worker-validation"):
        cmd = services[name]["command"]
        queues |= set(cmd[cmd.index("-Q") + 1].split(","))
    assert queues == {"monitoring", "decision", "training", "validation", "promotion"}
    assert any("--basic-auth" in part for part in services["flower"]["command"])
    env = services["beat"]["environment"]
    assert {"RETRAIN_DATABASE_URL", "RETRAIN_BROKER_URL", "RETRAIN_ARTIFACT_ROOT", "RETRAIN_CONFIG"} <= set(env)
    assert services["beat"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # the metrics exporter is its own service, on the port deploy/prometheus expects
    assert services["exporter"]["command"] == ["retrain", "exporter", "--port", "9808"]


def _argv(service: str, flower_port: int, tmp: Path) -> list[str]:
    import sys

    cmd = list(COMPOSE["services"][service]["command"])
    cmd = [c.replace("${FLOWER_BASIC_AUTH:?set FLOWER_BASIC_AUTH=user:password}", "ops:s3cret")
           .replace("--port=5555", f"--port={flower_port}").replace("/tmp/celerybeat-schedule", str(tmp / "celerybeat-schedule"))
           for c in cmd]
    if cmd[0] == "celery":
        return [sys.executable, "-m", "celery"] + cmd[1:]
    if cmd[0] == "retrain":
        return [sys.executable, "-m", "retrain.cli"] + cmd[1:]
    raise AssertionError(f"unexpected command {cmd}")


def test_every_service_command_runs_as_a_process(pg_url, redis_url, tmp_path):
    env = retrain_env(RETRAIN_DATABASE_URL=pg_url, RETRAIN_BROKER_URL=redis_url,
                      RETRAIN_RESULT_BACKEND=redis_url.rsplit("/", 1)[0] + "/1",
                      RETRAIN_ARTIFACT_ROOT=str(tmp_path / "artifacts"), RETRAIN_CONFIG=str(EXAMPLE_CONFIG),
                      RETRAIN_HOME=str(tmp_path))
    port = free_port()
    migrate = Proc("migrate", _argv("migrate", port, tmp_path), env, tmp_path)
    assert migrate.p.wait(60) == 0, migrate.log()
    procs = [Proc(s, _argv(s, port, tmp_path), env, tmp_path) for s in RETRAIN_SERVICES[1:]]
    try:
        for p in procs:
            if p.name.startswith("worker"):
                wait_for(f"{p.name} ready", lambda p=p: " ready." in p.log(), 60, procs)
        wait_for("beat sending the sweep", lambda: "retrain-sweep" in procs[0].log() or
                 "Scheduler: Sending due task" in procs[0].log() or "beat: Starting" in procs[0].log(), 60, procs)

        def flower(auth: str | None) -> int:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers")
            if auth:
                req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
            try:
                return urllib.request.urlopen(req, timeout=5).status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert wait_for("flower answering", lambda: flower("ops:s3cret") == 200, 60, procs)
        assert flower(None) == 401
        assert flower("ops:wrong") == 401
    finally:
        for p in procs:
            p.stop()
