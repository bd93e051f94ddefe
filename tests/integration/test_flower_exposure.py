"""What Flower shows without credentials, as README and docker-compose.yml say.

Flower's basic auth guards its pages and API but not ``/metrics`` and ``/healthcheck``
(the handlers carry no ``@authenticated``, and no option changes that). This test pins
that fact, so that a Flower upgrade that changes it sends us back to the README, and
checks the advice given instead: bind Flower to loopback, publish it on loopback only.
"""

from __future__ import annotations

import base64
import sys
import urllib.error
import urllib.request

import psutil
import pytest
import yaml

from tests.conftest import ROOT, free_port
from tests.procs import Proc, retrain_env, wait_for

pytestmark = pytest.mark.timeout(120)
FLOWER = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["flower"]


def _status(url: str, auth: str | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        return urllib.request.urlopen(req, timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_compose_publishes_flower_on_the_hosts_loopback_only():
    assert FLOWER["ports"] == ["127.0.0.1:5555:5555"]


def test_flower_behind_basic_auth_still_serves_metrics_and_healthcheck_to_anyone(redis_url, tmp_path):
    # Given Flower started with compose's own command, bound to loopback as the README advises
    port = free_port()
    cmd = [c.replace("${FLOWER_BASIC_AUTH:?set FLOWER_BASIC_AUTH=user:password}", "ops:s3cret")
           .replace("--port=5555", f"--port={port}") for c in FLOWER["command"]]
    assert cmd[:2] == ["celery", "-A"]
    env = retrain_env(RETRAIN_BROKER_URL=redis_url, RETRAIN_HOME=str(tmp_path), FLOWER_ADDRESS="127.0.0.1")
    flower = Proc("flower", [sys.executable, "-m", "celery", *cmd[1:]], env, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("flower answering", lambda: _status(f"{base}/", "ops:s3cret") == 200, 60, [flower])

        # Then the dashboard and the API want credentials
        assert _status(f"{base}/") == 401
        assert _status(f"{base}/api/workers") == 401
        assert _status(f"{base}/api/workers", "ops:wrong") == 401
        # But /metrics and /healthcheck answer anyone: hence loopback, or a proxy that guards every path
        assert _status(f"{base}/metrics") == 200
        assert _status(f"{base}/healthcheck") == 200
        # And FLOWER_ADDRESS (--address) keeps it on loopback
        listening = {c.laddr.ip for c in psutil.Process(flower.p.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}
    finally:
        flower.stop()
