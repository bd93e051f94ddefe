"""``retrain`` as a new user meets it (issue 20): one error per unknown object, options that check
their values, dates that name their option, rollbacks that refuse a failed version, a demo
home's own clock, decisions that show what they were made on, and a train that says when no
worker will decide it.

Through ``main()`` on the real SQLite and Postgres fixtures of ``tests/conftest.py``, as an
operator's shell runs it (``RETRAIN_*`` in the environment), and the console script where the
process matters (``--version``, ``--help``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest

import retrain.cli.commands.admin as admin
import retrain.cli.commands.common as common
from retrain.cli import benchmark_names, build_parser, main
from retrain.config import load_config
from retrain.core.clock import SimClock
from retrain.core.text import clip
from retrain.steps.dispatch import run_step
from tests.conftest import EXAMPLE_CONFIG, T0, make_context
from tests.rollout_world import add_version, make_production
from tests.runs import make_run

pytestmark = pytest.mark.timeout(120)

RETRAIN = Path(sys.executable).with_name("retrain")

MODEL_FILE = EXAMPLE_CONFIG.read_text() + """
[models.beta]
entry_point = "retrain.examples.direction:train"
data_source = "retrain.examples.direction:history"
features = ["f0", "f1"]
"""


def _shell(tmp_path, monkeypatch, db_url: str, broker: str = "memory://") -> None:
    """RETRAIN_* for ``main()`` as an operator's shell sets them; the cwd is tmp_path."""
    (tmp_path / "retrain.toml").write_text(MODEL_FILE)
    for k, v in {"RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_DATABASE_URL": db_url,
                 "RETRAIN_CONFIG": str(tmp_path / "retrain.toml"), "RETRAIN_BROKER_URL": broker,
                 "RETRAIN_ARTIFACT_ROOT": str(tmp_path / "artifacts")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def cli(any_db_url, tmp_path, monkeypatch):
    """A shell on a migrated database (SQLite and Postgres) and a context on the same state."""
    _shell(tmp_path, monkeypatch, any_db_url)
    monkeypatch.setattr(admin, "_publish_outbox", lambda ctx: None)
    return make_context(any_db_url, tmp_path, config=load_config(tmp_path / "retrain.toml"), clock=SimClock(T0))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse: --version, --help, a bad value
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------- 1. --version
def test_version_is_the_installed_package_version():
    done = subprocess.run([str(RETRAIN), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"retrain {installed_version('retrain')}"


# ---------------------------------------------------------------- 2. date options name themselves
@pytest.mark.parametrize("argv, option", [
    (["costs", "--until", "notadate"], "--until"),
    (["audit", "--since", "notadate"], "--since"),
    (["history", "direction", "--at", "notadate"], "--at"),
])
def test_a_bad_date_names_its_own_option(argv, option, capsys):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert f"argument {option}: not an ISO date or time" in err and "'notadate'" in err
    assert {"--until", "--since", "--at"} - {option} == {o for o in ("--until", "--since", "--at") if o not in err}


# ---------------------------------------------------------------- 3. unknown model: one error, exit 2
MODEL_COMMANDS = [
    ["decisions", "x"], ["versions", "x"], ["rollout", "x"], ["drift", "x"], ["status", "x"], ["rollback", "x"],
    ["rollback", "x", "1.0.0"], ["train", "x"], ["pause", "x"], ["resume", "x"], ["history", "x"], ["audit", "x"],
    ["show", "x@production"], ["gc", "x"], ["promote", "x", "--confirm"], ["notifications", "--model", "x"],
]


@pytest.mark.parametrize("argv", MODEL_COMMANDS, ids=lambda a: " ".join(a))
def test_an_unknown_model_is_one_clear_error_with_exit_2(argv, cli, capsys):
    code, out, err = _run(capsys, *argv)
    assert (code, out, err) == (2, "", "retrain: unknown model 'x'; configured: beta, direction\n")


def test_every_command_that_takes_a_model_is_checked():
    # Given the parser, When each subcommand's arguments are read, Then every one naming a model is in the table above
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    takes = {name for name, sp in sub.choices.items()
             if {a.dest for a in sp._actions} & {"model", "models", "ref"} and name not in ("demo", "backtest")}
    assert takes == {a[0] for a in MODEL_COMMANDS}


def test_a_model_gone_from_the_model_file_keeps_its_history_readable(cli, capsys):
    # Given a model the database knows (it was configured once) but the model file no longer lists
    from retrain.config import parse_config
    from retrain.steps.requests import sync_models

    body = {"entry_point": "retrain.examples.direction:train", "data_source": "retrain.examples.direction:history",
            "features": ["f0"]}
    old = make_context(cli.settings.database_url, Path(cli.settings.home).parent,
                       config=parse_config({"models": {"retired": body}}, "old model file"), clock=SimClock(T0))
    sync_models(old)
    # When its decisions are listed, Then it is not an unknown model
    code, out, err = _run(capsys, "decisions", "retired")
    assert (code, out.strip(), err) == (0, "no decisions", "")


# ---------------------------------------------------------------- 4. rollback to a failed version
def _failed_versions(ctx) -> dict[str, str]:
    """1.0.0 serves; 1.1.0 failed validation, 1.2.0 was rejected in shadow, 1.3.0 rolled back as a canary."""
    for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"):
        add_version(ctx, v, "A")
    make_production(ctx, "1.0.0")
    now = ctx.now()
    with ctx.store.tx() as tx:
        row = tx.versions.get("direction", "1.1.0")
        tx.versions.update(row, status="rejected", metrics={**row.metrics, "gate": {
            "verdict": "rejected", "detail": "holdout: accuracy 0.4901 vs production 0.5848 (-16.2%)"}})
        for version, phase, outcome in (
                ("1.2.0", "rejected", "shadow: accuracy 0.51 vs production 0.58 (-12.1%) on 1200 paired rows"),
                ("1.3.0", "rolled_back", "canary worse than production by 46.1% (limit 10%): canary accuracy "
                                         "0.2619 on 84 vs 0.4861 on 216")):
            run = make_run(tx, "direction", now, state="rejected", version=version)
            tx.rollouts.add(run_id=run.id, model="direction", candidate_version=version, baseline_version="1.0.0",
                            phase=phase, stages=[10, 25, 50, 100], stage=1, share_pct=0.0, started_at=now,
                            stage_started_at=now, canary_started_at=now, updated_at=now, finished_at=now,
                            gate=None, gate_by=None, scored_until=0, paired={}, figures={}, history=[],
                            outcome=outcome)
            tx.versions.update(tx.versions.get("direction", version),
                               status="rolled_back" if phase == "rolled_back" else "rejected")
    return {"1.1.0": "failed validation: holdout: accuracy 0.4901 vs production 0.5848 (-16.2%)",
            "1.2.0": "rejected in shadow", "1.3.0": "rolled back as a canary"}


@pytest.mark.parametrize("target", ["1.1.0", "1.2.0", "1.3.0"])
def test_rollback_to_a_failed_version_is_refused_with_its_reason_unless_forced(target, cli, capsys):
    why = _failed_versions(cli)[target]

    # When an operator rolls back to it
    code, out, err = _run(capsys, "rollback", "direction", target)

    # Then it is refused (exit 1) with the reason and its figures, and production is unchanged
    assert code == 1 and out == ""
    assert err.startswith(f"retrain: refused: {target} ") and why in err and "--force" in err
    assert target != "1.2.0" or "-12.1%" in err
    assert target != "1.3.0" or "46.1%" in err
    with cli.store.tx() as tx:
        assert tx.aliases.get("direction", "production") == "1.0.0"

    # When forced, Then it serves, and the audit trail says it was forced past what
    code, out, err = _run(capsys, "rollback", "direction", target, "--force", "--actor", "carol", "--json")
    assert code == 0, err
    assert json.loads(out)["production"] == target and why in json.loads(out)["forced_past"]
    with cli.store.tx() as tx:
        assert tx.aliases.get("direction", "production") == target
        event = [e for e in tx.audit.log(model="direction", kinds=["rollback"], limit=10) if e.actor == "carol"][-1]
    assert event.data["forced"] is True and why in event.data["objection"] and "--force" in event.message


def test_rollback_to_a_good_version_needs_no_force(cli, capsys):
    _failed_versions(cli)
    code, out, err = _run(capsys, "rollback", "direction", "1.4.0")
    assert code == 0 and "production 1.0.0 -> 1.4.0" in out and "forced" not in out


# ---------------------------------------------------------------- 5. numeric options
def _numeric_options():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sp in sub.choices.items():
        for a in sp._actions:
            if a.type in (int, float) or getattr(a.type, "__module__", "") == common.__name__ and a.option_strings:
                yield name, a


def test_no_numeric_option_takes_a_bare_int_or_float():
    # Every number an option takes says what it may be (argparse's int accepts -5)
    bare = [(n, a.option_strings) for n, a in _numeric_options() if a.type in (int, float)]
    assert bare == []
    assert len(list(_numeric_options())) >= 8


@pytest.mark.parametrize("argv, message", [
    (["decisions", "--limit", "-5"], "argument --limit: must be at least 1 (got -5)"),
    (["decisions", "--limit", "0"], "argument --limit: must be at least 1 (got 0)"),
    (["audit", "--limit", "-5"], "argument --limit: must be at least 1 (got -5)"),
    (["history", "direction", "--limit", "0"], "argument --limit: must be at least 1"),
    (["notifications", "--limit", "-1"], "argument --limit: must be at least 1"),
    (["costs", "--days", "-3"], "argument --days: must be 0 or more (got -3)"),
    (["costs", "--days", "two"], "argument --days: not an integer: 'two'"),
    (["gc", "--grace-minutes", "-1"], "argument --grace-minutes: must be 0 or more"),
    (["demo", "--days", "0"], "argument --days: must be more than 0"),
    (["demo", "--step-minutes", "-10"], "argument --step-minutes: must be at least 1"),
    (["exporter", "--port", "70000"], "argument --port: must be a port, 1-65535"),
    (["backtest", "x.csv", "--time", "t", "--label", "y", "--out", "o", "--jobs", "0"],
     "argument --jobs: must be at least 1"),
])
def test_a_numeric_option_out_of_range_is_a_usage_error(argv, message, capsys):
    code, _, err = _run(capsys, *argv)
    assert code == 2 and message in err


def test_limit_counts(cli, capsys):
    for i in range(3):
        with cli.store.tx() as tx:
            tx.audit.record(T0 + timedelta(minutes=i), "admin", "op", f"event {i}", model="direction")
    code, out, _ = _run(capsys, "audit", "--limit", "2", "--json")
    assert code == 0 and [e["message"] for e in json.loads(out)] == ["event 1", "event 2"]


# ---------------------------------------------------------------- 6. a demo home's own "now"
def test_costs_and_status_on_a_demo_home_use_its_simulated_clock(cli, capsys):
    # Given a demo home whose simulated clock reads 2026-01-09 12:00, with spend that day
    demo_now = T0 + timedelta(days=4, hours=12)
    home = Path(os.environ["RETRAIN_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / common.DEMO_CLOCK_FILE).write_text(json.dumps({"now": demo_now.isoformat()}))
    with cli.store.tx() as tx:
        run = make_run(tx, "direction", demo_now - timedelta(hours=2))
        tx.ledger.add(run.id, "direction", "actual", 0.25, demo_now - timedelta(hours=1), {})

    # When costs and status run (today is months later)
    code, out, _ = _run(capsys, "costs")
    # Then they use the demo's day, and say so
    assert code == 0
    assert out.startswith("(a demo home: as of its simulated clock, 2026-01-09 12:00 UTC)")
    assert "2026-01-09" in out and "no spend" not in out
    assert json.loads(_run(capsys, "costs", "--json")[1])["today"]["total_usd"] == pytest.approx(0.25)
    code, out, _ = _run(capsys, "status")
    assert code == 0 and "simulated clock, 2026-01-09 12:00 UTC" in out
    assert json.loads(_run(capsys, "status", "--json")[1])["now"].startswith("2026-01-09T12:00")


def test_costs_elsewhere_use_the_wall_clock(cli, capsys):
    code, out, _ = _run(capsys, "costs", "--json")
    data = json.loads(out)
    assert code == 0 and "clock" not in data and not data["now"].startswith("2026-01-05")


# ---------------------------------------------------------------- 7. decisions show the evidence as decided
def test_a_decision_shows_the_evidence_it_was_made_on_not_the_refreshed_request(cli, capsys):
    # Given a drift request decided (deferred: the first week needs approval) on features f1 and f2
    from retrain.core.domain import RetrainRequest, TriggerKind, new_id

    ctx = cli
    req = RetrainRequest(id=new_id(), model="direction", trigger=TriggerKind.DRIFT, created_at=ctx.now(),
                         reason="2 of 8 features drifted (f1, f2)", evidence={"drifted": ["f1", "f2"]},
                         requested_by="sweep")
    with ctx.store.tx() as tx:
        rid, _ = tx.requests.open(req)
    run_step(ctx, "retrain.decide", {"v": 1, "request_id": rid})
    # And the trigger firing again later, which refreshes the open request's reason and evidence
    with ctx.store.tx() as tx:
        row = tx.requests.get(rid)
        tx.requests.update(row, reason="4 of 8 features drifted (f1, f2, f5, f6)",
                           evidence={"drifted": ["f1", "f2", "f5", "f6"]})

    # When the decisions are listed
    code, out, _ = _run(capsys, "decisions", "direction")
    # Then the decision shows what it was made on
    assert code == 0
    assert "2 of 8 features drifted (f1, f2)" in out and "drifted f1, f2" in out
    assert "f5, f6" not in out and "4 of 8" not in out
    data = json.loads(_run(capsys, "decisions", "direction", "--json")[1])
    assert data[-1]["evidence"]["drifted"] == ["f1", "f2"]
    assert data[-1]["detail"]["request"]["reason"] == "2 of 8 features drifted (f1, f2)"


# ---------------------------------------------------------------- 8. train with no worker
def _train_in_a_shell(tmp_path, db_url: str, broker: str) -> subprocess.CompletedProcess[str]:
    """``retrain train direction`` as its own process (the Celery app reads the broker URL once)."""
    (tmp_path / "retrain.toml").write_text(MODEL_FILE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    env.update({"RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_DATABASE_URL": db_url,
                "RETRAIN_CONFIG": str(tmp_path / "retrain.toml"), "RETRAIN_BROKER_URL": broker})
    return subprocess.run([str(RETRAIN), "train", "direction"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=90)


def test_train_on_the_embedded_broker_says_how_to_start_a_worker(sqlite_url, tmp_path):
    done = _train_in_a_shell(tmp_path, sqlite_url, f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    assert done.returncode == 0, done.stderr
    assert "the decision follows" not in done.stdout
    assert "nothing happens until you start one" in done.stdout
    assert "-A workers.app worker -Q monitoring,decision" in done.stdout


def test_train_with_no_worker_on_redis_says_none_is_running(sqlite_url, redis_url, tmp_path):
    done = _train_in_a_shell(tmp_path, sqlite_url, redis_url)
    assert done.returncode == 0, done.stderr
    assert "no worker is running on the decision queue (none answered within 1 s)" in done.stdout
    assert "-A workers.app worker -Q monitoring,decision" in done.stdout and "decisions direction" in done.stdout


# ---------------------------------------------------------------- 9. help, bench, drift, cut text
def test_every_command_and_option_has_a_help_line():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert set(helps) == set(sub.choices) and all(helps.values()), helps
    missing = [(name, a.dest) for name, sp in sub.choices.items() for a in sp._actions
               if a.dest not in ("help", "json") and not a.help]
    assert missing == []


def test_backtest_help_has_no_rest_markup():
    done = subprocess.run([str(RETRAIN), "backtest", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "``" not in done.stdout and ":mod:" not in done.stdout
    assert "report.json" in done.stdout


def test_an_unknown_benchmark_lists_the_benchmarks(capsys):
    code, _, err = _run(capsys, "bench", "nosuch")
    names = benchmark_names()
    assert code == 2 and {"decision", "router", "sweep"} <= set(names)
    assert err == f"retrain: unknown benchmark 'nosuch'; benchmarks: {', '.join(names)}\n"


def test_the_drift_verdict_says_none_when_nothing_drifted(cli, capsys):
    with cli.store.tx() as tx:
        tx.monitoring.add_drift_report("direction", "1.0.0", T0, False, {"features": [
            {"name": "f0", "test": "ks", "statistic": 0.01, "p_value": 0.9, "p_adjusted": 1.0, "effect_size": 0.0,
             "drifted": False},
            {"name": "f1", "test": "ks", "statistic": 0.3, "p_value": 1e-9, "p_adjusted": 1e-8, "effect_size": 0.4,
             "drifted": True}]})
    code, out, _ = _run(capsys, "drift", "direction")
    rows = {ln.split()[0]: ln.split()[-1] for ln in out.splitlines() if ln.startswith(("f0 ", "f1 "))}
    assert code == 0 and rows == {"f0": "none", "f1": "DRIFT"}


@pytest.mark.parametrize("text, width, cut", [
    ("short", 10, "short"),
    ("the canary was rolled back automatically", 20, "the canary was…"),
    ("supercalifragilistic", 10, "supercali…"),
])
def test_cut_text_ends_with_an_ellipsis_at_a_word_boundary(text, width, cut):
    assert clip(text, width) == cut and len(clip(text, width)) <= width


# ---------------------------------------------------------------- 10. a plain status next to a demo
def test_status_next_to_a_demo_points_at_its_home(tmp_path, monkeypatch, capsys):
    # Given a folder where `retrain demo` ran (retrain-demo/ with its clock), and no RETRAIN_* set
    for k in ("RETRAIN_HOME", "RETRAIN_DATABASE_URL", "RETRAIN_BROKER_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RETRAIN_CONFIG", str(EXAMPLE_CONFIG))
    (tmp_path / "retrain-demo").mkdir()
    (tmp_path / "retrain-demo" / common.DEMO_CLOCK_FILE).write_text(json.dumps({"now": T0.isoformat()}))
    monkeypatch.chdir(tmp_path)

    # When a plain status runs
    code, out, err = _run(capsys, "status")

    # Then it points at the demo's home instead of an empty database to upgrade
    assert code == 1 and out == ""
    assert "the demo's is in retrain-demo/" in err and "RETRAIN_HOME=retrain-demo" in err
    assert "db upgrade" not in err and not (tmp_path / ".retrain").exists()


# ---------------------------------------------------------------- 11. --json on every listing
LISTINGS = [["status"], ["drift", "direction"], ["versions", "direction"], ["history", "direction"],
            ["rollout", "direction"], ["decisions"], ["costs"], ["audit"], ["gc", "--dry-run"], ["notifications"],
            ["db", "current"]]


def test_every_listing_command_has_json():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    actions = {"demo", "backtest", "train", "approve", "reject", "pause", "resume", "promote", "exporter"}
    without = [n for n, sp in sub.choices.items()
               if "--json" not in {o for a in sp._actions for o in a.option_strings} and n not in actions]
    assert without == []


@pytest.mark.parametrize("argv", LISTINGS, ids=lambda a: a[0])
def test_json_listings_print_one_json_document(argv, cli, capsys):
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    json.loads(out)


# ---------------------------------------------------------------- 12. exit codes documented
def test_exit_codes_are_in_the_help_epilog(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    epilog = out[out.index("exit status:"):]
    for line in ("0    the command did what was asked", "1    it failed", "2    usage"):
        assert line in epilog



# ---------------------------------------------------------------- 13. .ci/test never changes a password
def test_the_ci_script_never_changes_a_database_role_or_password():
    from tests.conftest import ROOT

    script = (ROOT / ".ci" / "test").read_text()
    code = "\n".join(ln for ln in script.splitlines() if not ln.lstrip().startswith("#"))
    assert not re.search(r"ALTER\s+(USER|ROLE)|PASSWORD\s+'", code, re.I)
    # When the default login fails it runs a private throwaway cluster (trust auth, free port) instead
    assert "initdb" in code and "--auth=trust" in code and "RETRAIN_TEST_PG_ADMIN_URL=" in code
