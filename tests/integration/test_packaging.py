"""The trading app's install, ``pip install 'retrain[client]'``: the client and the router import
and run without the controller's packages (Celery, Flower, matplotlib, scikit-learn, psycopg2...).

A subprocess blocks those modules (``sys.modules[name] = None``: importing one raises
ImportError), then imports ``retrain.client`` and ``retrain.serving``, sends a report through the
kombu sender and routes from a real SQLite retrain database.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(120)

#: What only the controller needs: never imported by the client or the router.
SERVER_ONLY = ["celery", "flower", "matplotlib", "sklearn", "psycopg2", "scipy", "alembic", "psutil", "pydantic",
               "pydantic_settings", "croniter", "prometheus_client", "apprise"]

SCRIPT = textwrap.dedent("""
    import sys
    for name in sys.argv[1].split(","):
        sys.modules[name] = None  # import name -> ImportError
    import retrain.client, retrain.client.relay, retrain.client.replay_sender, retrain.serving
    from retrain.client import RetrainClient, kombu_sender
    from retrain.serving import ModelRouter, StoreRoutingReader

    client = RetrainClient(sender=kombu_sender("memory://"), start=False)
    client.report("direction", "p1", [0.1, 0.2], 1, "1.0.0", 1, 0.01)
    client.flush()
    router = ModelRouter("direction", reader=StoreRoutingReader.from_url(sys.argv[2]), artifacts=lambda sha: None,
                         client=client, start=False)
    router.refresh()
    router.close()
    client.close(timeout_s=2)
    blocked = set(sys.argv[1].split(","))
    print(",".join(sorted(n for n, m in sys.modules.items() if m is not None and n.split(".")[0] in blocked)))
""")


def test_client_and_router_run_without_the_controllers_packages(sqlite_url):
    done = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(SERVER_ONLY), sqlite_url],
                          capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_the_client_extra_is_the_base_install_and_the_server_extra_holds_the_rest():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        import re

        return {re.split(r"[<>=\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}

    base, extras = names(project["dependencies"]), project["optional-dependencies"]
    assert names(extras["client"]) == base == {"kombu", "redis", "sqlalchemy", "numpy", "joblib"}
    assert {"celery", "flower", "matplotlib", "scikit-learn", "psycopg2-binary"} <= names(extras["server"])
    assert not base & {"celery", "flower", "matplotlib", "scikit-learn", "psycopg2-binary", "scipy"}


def test_the_command_line_without_the_server_extra_says_what_to_install():
    script = ("import sys\nfor n in sys.argv[1].split(','): sys.modules[n] = None\n"
              "from retrain.cli import main\nsys.exit(main(['status']))")
    done = subprocess.run([sys.executable, "-c", script, ",".join(SERVER_ONLY)], capture_output=True, text=True,
                          timeout=90, cwd=ROOT)
    assert done.returncode == 1
    assert "pip install 'retrain[server]'" in done.stderr and "Traceback" not in done.stderr
