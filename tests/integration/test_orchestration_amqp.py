"""The basic path on RabbitMQ: a retraining request sent by name goes through a real worker
on amqp to a promoted version, with priority queues (``x-max-priority``) when
``RETRAIN_AMQP_MAX_PRIORITY`` asks for them (plain queues, Celery's default, otherwise).

Each test run gets a vhost of its own (rabbitmqctl), so it never shares queues with anyone.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from retrain.client import kombu_sender
from tests.conftest import _unavailable
from tests.faults.harness import FINAL_RUN, fault_env, runs, store_for, versions, write_model_file
from tests.procs import start_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _ctl(*args: str) -> str:
    out = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def amqp_url():
    if shutil.which("rabbitmqctl") is None:
        _unavailable("RabbitMQ (rabbitmqctl)", RuntimeError("rabbitmqctl not found"))
    vhost = f"retrain-test-{uuid.uuid4().hex[:8]}"
    try:
        _ctl("add_vhost", vhost)
        _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except Exception as exc:  # noqa: BLE001
        _unavailable("RabbitMQ", exc)
    yield vhost, f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    _ctl("delete_vhost", vhost)


def test_a_request_goes_through_a_real_worker_on_rabbitmq(pg_url, tmp_path, amqp_url):
    vhost, url = amqp_url
    config = write_model_file(tmp_path / "models.toml", {"m": {}})
    env = fault_env(pg_url, url, tmp_path, config, amqp_max_priority=10)
    worker = start_worker("all", "monitoring,decision,training,validation,promotion", env, tmp_path, pool="prefork")
    store = store_for(pg_url)
    try:
        wait_for("the worker", lambda: "ready." in worker.log(), 40, [worker])
        # Given the trading app's sender on amqp, When it asks for a retraining by task name
        kombu_sender(url, amqp_max_priority=10)("retrain.request_retraining", {"v": 1, "model": "m", "reason": "amqp path",
                                                         "trigger": "manual", "requested_by": "test"}, "decision", 3)
        # Then the run goes request -> decision -> training -> validation -> promotion on the worker
        run = wait_for("the run to end", lambda: next((r for r in runs(store) if r.state in FINAL_RUN), None), 60,
                       [worker])
        assert run.state == "done" and versions(store, "m") == ["1.0.0"]
        # And the queues are RabbitMQ priority queues, as configured
        listing = _ctl("list_queues", "-p", vhost, "name", "arguments")
        for q in ("monitoring", "decision", "training", "validation", "promotion"):
            line = next(x for x in listing.splitlines() if x.split()[0] == q)
            assert "x-max-priority" in line and "10" in line, listing
    finally:
        worker.stop()
