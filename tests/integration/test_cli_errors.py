"""``retrain`` as an operator's shell runs it: the installed console script, as a real process.

A database or broker that cannot be used ends as one line on stderr (its URL with the
password masked, and what to check), exit status 1 (a failure, not a usage error: see the
help's epilog), no traceback, whatever the
command. A reader that goes away (``retrain audit | head -1``) ends the command
quietly. The services "out of reach" are a closed port on this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from retrain.cli import EXIT_CLOSED_PIPE, build_parser
from retrain.cli.commands.common import unreachable
from retrain.core.errors import BrokerUnavailableError
from tests.conftest import EXAMPLE_CONFIG, T0, make_context

pytestmark = pytest.mark.timeout(120)

RETRAIN = Path(sys.executable).with_name("retrain")  # the console script of this venv
PASSWORD = "s3cr3t-pw"
CLOSED = "127.0.0.1:1"  # nothing listens on port 1 here: connections are refused at once
DEAD_DATABASE = f"postgresql+psycopg2://ops:{PASSWORD}@{CLOSED}/retrain"
SHOWN_DATABASE = f"postgresql+psycopg2://ops:***@{CLOSED}/retrain"

# One invocation per subcommand, each with the arguments it requires.
COMMANDS = {
    "db": ["db", "upgrade"],
    "status": ["status"],
    "drift": ["drift", "direction"],
    "versions": ["versions", "direction"],
    "show": ["show", "direction@production"],
    "history": ["history", "direction"],
    "rollback": ["rollback", "direction"],
    "gc": ["gc", "--dry-run"],
    "rollout": ["rollout", "direction"],
    "promote": ["promote", "direction", "--confirm"],
    "train": ["train", "direction"],
    "approve": ["approve", "abc123"],
    "reject": ["reject", "abc123", "--reason", "no"],
    "decisions": ["decisions", "direction"],
    "costs": ["costs"],
    "audit": ["audit"],
    "pause": ["pause", "direction"],
    "resume": ["resume", "direction"],
    "notifications": ["notifications"],
    "exporter": ["exporter"],  # reads the database before it serves
}
# These never open the settings' database: demo and backtest bring their own SQLite,
# bench its own services.
OWN_STATE = {"demo", "bench", "backtest"}


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    env.update({"RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_CONFIG": str(EXAMPLE_CONFIG),
                "RETRAIN_BROKER_URL": "memory://", **settings})
    return env


def _retrain(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RETRAIN), *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=90)


def test_the_table_names_every_command_that_uses_the_database():
    # Given the parser's subcommands, Then each is exercised below or opens no settings database
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == set(COMMANDS) | OWN_STATE


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_an_unreachable_database_is_one_line_with_the_url_masked(name, tmp_path):
    # Given RETRAIN_DATABASE_URL pointing at a port where no Postgres listens
    env = _env(tmp_path, RETRAIN_DATABASE_URL=DEAD_DATABASE)

    # When the command runs
    done = _retrain(COMMANDS[name], env, tmp_path)

    # Then it exits 1 with one line naming the URL without its password, and what to check
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"retrain: cannot use the database {SHOWN_DATABASE}: ")
    assert "Connection refused" in lines[0]
    assert "is Postgres running and the URL right? set RETRAIN_DATABASE_URL" in lines[0]
    assert PASSWORD not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_a_database_file_that_cannot_be_opened_says_what_to_check(tmp_path):
    # Given a SQLite URL in a folder that does not exist
    url = f"sqlite:///{tmp_path / 'missing' / 'retrain.db'}"

    # When status runs
    done = _retrain(["status"], _env(tmp_path, RETRAIN_DATABASE_URL=url), tmp_path)

    # Then one line names the file and what to check
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"retrain: cannot use the database {url}: unable to open database file; "
        "does its folder exist and may this user write there? set RETRAIN_DATABASE_URL"]


@pytest.mark.parametrize("broker, shown", [
    (f"redis://:{PASSWORD}@{CLOSED}/0", f"redis://:***@{CLOSED}/0"),
    (f"amqp://ops:{PASSWORD}@{CLOSED}//", f"amqp://ops:***@{CLOSED}//"),
])
def test_an_unreachable_broker_leaves_the_messages_in_the_outbox_with_one_line(broker, shown, tmp_path):
    # Given a working database and a broker on a closed port
    env = _env(tmp_path, RETRAIN_DATABASE_URL=f"sqlite:///{tmp_path / 'retrain.db'}", RETRAIN_BROKER_URL=broker)
    assert _retrain(["db", "upgrade"], env, tmp_path).returncode == 0

    # When an operator asks for a retraining (committed first, then published)
    done = _retrain(["train", "direction"], env, tmp_path)

    # Then the request stands (the relay on beat publishes it later) and stderr says why in one line
    assert done.returncode == 0, done.stderr
    assert "request " in done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"cannot reach the broker {shown}: " in lines[0]
    assert "set RETRAIN_BROKER_URL" in lines[0]
    assert PASSWORD not in done.stderr + done.stdout


def test_a_broker_error_that_reaches_main_is_translated_to_one_line(monkeypatch):
    # Given the error a real kombu connection raises on a closed port
    from kombu import Connection

    url = f"redis://:{PASSWORD}@{CLOSED}/0"
    monkeypatch.setenv("RETRAIN_BROKER_URL", url)
    with Connection(url, connect_timeout=2) as conn, pytest.raises(Exception) as raised:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)

    # When it is translated
    error = unreachable(raised.value)

    # Then it is the broker's one-line error, password masked
    assert isinstance(error, BrokerUnavailableError)
    assert str(error).startswith(f"cannot reach the broker redis://:***@{CLOSED}/0: ")
    assert "\n" not in str(error) and PASSWORD not in str(error)


def test_the_stores_own_unavailable_error_is_translated_with_the_url(monkeypatch):
    # Given the error the store raises (from the driver's) when its database is out of reach
    from sqlalchemy import text

    from retrain.cli import _name_failing_databases
    from retrain.core.errors import StoreUnavailableError
    from retrain.storage.db import Database

    monkeypatch.setenv("RETRAIN_DATABASE_URL", DEAD_DATABASE)
    _name_failing_databases()
    with pytest.raises(StoreUnavailableError) as raised, Database(DEAD_DATABASE).session() as s:
        s.execute(text("select 1"))

    # When it is translated, Then it names the database, masked, in one line
    error = unreachable(raised.value)
    assert isinstance(error, StoreUnavailableError)
    assert str(error).startswith(f"cannot use the database {SHOWN_DATABASE}: ")
    assert str(error).endswith("set RETRAIN_DATABASE_URL")
    assert "\n" not in str(error) and PASSWORD not in str(error)


def test_an_error_that_is_not_about_a_service_is_left_alone():
    assert unreachable(ValueError("a bug")) is None
    assert unreachable(KeyError("x")) is None


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(extra, tmp_path):
    # Given a database with far more audit events than a pipe buffers (about 600 kB of text)
    url = f"sqlite:///{tmp_path / 'retrain.db'}"
    env = _env(tmp_path, RETRAIN_DATABASE_URL=url)
    assert _retrain(["db", "upgrade"], env, tmp_path).returncode == 0
    ctx = make_context(url, tmp_path)
    with ctx.store.tx() as tx:
        for i in range(4000):
            tx.audit.record(T0 + timedelta(seconds=i), "admin", "operator", f"event {i} " + "x" * 120, model="direction")
    ctx.store.db.dispose()

    # When its output goes to `head -1`, which exits after the first line
    producer = subprocess.Popen([str(RETRAIN), "audit", "--limit", "4000", *extra], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=producer.stdout, stdout=subprocess.PIPE)
    assert producer.stdout is not None and producer.stderr is not None
    producer.stdout.close()  # head holds the only read end: when it exits, the pipe is closed
    first, _ = head.communicate(timeout=90)
    err = producer.stderr.read().decode()
    code = producer.wait(timeout=90)

    # Then head printed the first line, and retrain stopped without a word, like a Unix tool on SIGPIPE
    assert first.decode().strip()
    assert "Traceback" not in err and "BrokenPipeError" not in err
    assert err == ""
    assert code == EXIT_CLOSED_PIPE == 141
