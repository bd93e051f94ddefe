"""The operator's side of the decision, through ``retrain`` itself (``main()``) on SQLite.

``RETRAIN_HOME`` points at a temporary directory, as an operator's shell would.
The decision worker is played by the same step run in-process
(:func:`retrain.steps.dispatch.run_step` on the outbox's ``retrain.decide``
messages): the CLI's own publishing to a broker is switched off so that the
messages stay in the outbox for it.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest

import retrain.cli.commands.admin as admin
from retrain.cli import main
from retrain.config import load_config
from retrain.core.clock import SystemClock
from retrain.steps.dispatch import run_step
from tests.conftest import make_context
from tests.runs import backdate, end_run, make_run

pytestmark = pytest.mark.timeout(60)

MODEL_FILE = """
[policy]
value_per_accuracy_point_usd = 1e-5

[models.alpha]
entry_point = "retrain.examples.direction:train"
data_source = "retrain.examples.direction:history"
features = ["f0", "f1"]
first_run_cost_usd = 1.0
[models.alpha.policy]
approval_days = 0

[models.young]
entry_point = "retrain.examples.direction:train"
data_source = "retrain.examples.direction:history"
features = ["f0", "f1"]
"""


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """A shell for ``retrain``: RETRAIN_HOME and a model file in tmp, the schema upgraded."""
    home = tmp_path / "home"
    (tmp_path / "retrain.toml").write_text(MODEL_FILE)
    url = f"sqlite:///{home / 'retrain.db'}"
    for k, v in {"RETRAIN_HOME": str(home), "RETRAIN_DATABASE_URL": url,
                 "RETRAIN_CONFIG": str(tmp_path / "retrain.toml"), "RETRAIN_BROKER_URL": "memory://"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(admin, "_publish_outbox", lambda ctx: None)
    assert main(["db", "upgrade"]) == 0
    ctx = make_context(url, tmp_path, config=load_config(tmp_path / "retrain.toml"), clock=SystemClock())
    return ctx


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _decide_pending(ctx) -> list:
    """What a decision worker would do with the messages the CLI left."""
    with ctx.store.tx() as tx:
        msgs = [m for m in tx.outbox.pending(limit=1000) if m.task == "retrain.decide"]
        tx.outbox.mark_published([m.id for m in msgs], ctx.now())
    return [run_step(ctx, m.task, m.payload) for m in msgs]


def _spend(ctx, model: str, usd: float) -> None:
    """A run earlier today that cost ``usd``."""
    now = ctx.now()
    with ctx.store.tx() as tx:
        rid = make_run(tx, model, now - timedelta(minutes=1), state="done").id
        tx.ledger.add(rid, model, "reservation", usd, now)


def test_override_budget_needs_a_reason_and_passes_it_to_the_decision(cli, capsys):
    # Given the day's budget nearly spent ($9.50 of $10) and a $1 run to decide
    ctx = cli
    _spend(ctx, "alpha", 9.5)
    with ctx.store.tx() as tx:
        (run,) = tx.runs.newest()
        backdate(tx, run.id, ctx.now() - timedelta(hours=7))  # out of the cooldown
    # When an operator forces a retraining without a reason, Then it is refused with the fix
    code, _, err = _run(capsys, "train", "alpha", "--override-budget")
    assert code == 2 and "--override-budget needs --reason" in err
    # When the operator asks without an override, Then the budget defers it
    code, out, _ = _run(capsys, "train", "alpha", "--reason", "numbers look off")
    assert code == 0 and "opened" in out
    (plain,) = _decide_pending(ctx)
    assert plain.verdict == "defer" and "budget_daily" in plain.summary
    # When the operator forces it with a reason
    code, out, _ = _run(capsys, "train", "alpha", "--override-budget", "--reason", "desk needs it today",
                        "--actor", "carol")
    assert code == 0
    # Then the reason is the request's override reason, the waiting request is replaced by it,
    with ctx.store.tx() as tx:
        forced = [r for r in tx.requests.newest("alpha") if r.override_budget]
        old = tx.requests.get(plain.request_id)
    assert len(forced) == 1 and forced[0].evidence["override_reason"] == "desk needs it today"
    assert forced[0].requested_by == "carol" and old.status == "superseded"
    # and the decision approves it as a manual run, recording the override and what it bypassed
    (res,) = _decide_pending(ctx)
    assert res.verdict == "approve"
    code, out, _ = _run(capsys, "decisions", "alpha", "--limit", "1")
    assert "APPROVE" in out and "override by carol: desk needs it today" in out
    assert "BYPASSED" in out  # budget_daily would have failed
    code, out, _ = _run(capsys, "audit", "alpha", "--kind", "bypass", "--json")
    (bypass,) = json.loads(out)
    assert bypass["actor"] == "carol" and "budget_daily" in bypass["data"]["would_have_failed"]


def test_pause_and_resume_one_model_or_all(cli, capsys):
    ctx = cli
    assert _run(capsys, "pause", "alpha", "--reason", "incident 7")[0] == 0
    _run(capsys, "train", "alpha", "--reason", "try")
    (res,) = _decide_pending(ctx)
    assert res.verdict == "reject" and "paused" in res.summary
    assert _run(capsys, "resume", "alpha")[0] == 0
    assert _run(capsys, "pause", "--all", "--reason", "freeze", "--actor", "ops")[0] == 0
    _run(capsys, "train", "alpha", "--reason", "try again")
    (res,) = _decide_pending(ctx)
    assert res.verdict == "reject" and "all retraining is paused" in res.summary
    assert _run(capsys, "resume", "--all")[0] == 0
    code, _, err = _run(capsys, "pause")
    assert code == 2 and "one model, or --all" in err
    code, out, _ = _run(capsys, "audit", "--kind", "admin", "--json")
    assert [e["message"].split(" for ")[0] for e in json.loads(out)] == [
        "automatic retraining paused", "automatic retraining resumed", "automatic retraining paused",
        "automatic retraining resumed"]


def test_approve_and_reject_by_the_id_the_cli_shows(cli, capsys):
    # Given a model that was never deployed (first-week approval applies)
    ctx = cli
    _run(capsys, "train", "young", "--reason", "first model")
    (pending,) = _decide_pending(ctx)
    assert pending.verdict == "pending_approval"
    code, out, _ = _run(capsys, "decisions", "young")
    assert "PENDING_APPROVAL" in out and pending.decision_id in out
    # When an operator approves it by the first 8 characters of the decision id
    code, out, _ = _run(capsys, "approve", pending.decision_id[:8], "--actor", "alice", "--reason", "ok")
    assert code == 0 and "approved by alice" in out
    # Then it is decided again and approved
    (again,) = _decide_pending(ctx)
    assert again.verdict == "approve" and again.run_id
    # and a rejection needs a reason (argparse refuses without one), and closes the request
    with ctx.store.tx() as tx:
        end_run(tx, again.run_id, "cancelled", ctx.now())  # out of the way, so that the next request is decided
    _run(capsys, "train", "young", "--reason", "second")
    (second,) = _decide_pending(ctx)
    with pytest.raises(SystemExit):
        main(["reject", second.request_id])
    code, out, _ = _run(capsys, "reject", second.request_id, "--reason", "not this week")
    assert code == 0 and "rejected by operator: not this week" in out
    code, _, err = _run(capsys, "approve", "no-such-id")
    assert code == 2 and "no request or decision" in err


def test_decisions_show_every_rule_with_value_limit_and_verdict(cli, capsys):
    ctx = cli
    _run(capsys, "train", "alpha", "--reason", "look")
    _decide_pending(ctx)
    code, out, _ = _run(capsys, "decisions", "alpha")
    assert code == 0
    header = next(line for line in out.splitlines() if line.strip().startswith("rule"))
    assert header.split() == ["rule", "verdict", "value", "limit", "detail"]
    for rule in ("paused", "coalesce", "approval", "cooldown", "daily_runs", "global_daily_runs", "offpeak",
                 "resources", "budget_override", "budget_daily", "budget_monthly", "model_budget_daily",
                 "model_budget_monthly", "roi"):
        assert any(line.split()[:1] == [rule] for line in out.splitlines()), rule
    assert "<= $10.00" in out and ">= 6 h" in out and "$1.00 projected" in out
    code, out, _ = _run(capsys, "decisions", "alpha", "--json")
    (d,) = json.loads(out)
    assert d["verdict"] == "approve" and len(d["rules"]) == 14 and d["request"]["requested_by"] == "operator"


def test_costs_show_spend_per_day_and_month_per_model_against_the_caps(cli, capsys):
    # Given $2.50 spent by alpha today, and a $1 run of alpha approved (its estimate held)
    ctx = cli
    _spend(ctx, "alpha", 2.5)
    with ctx.store.tx() as tx:
        (run,) = tx.runs.newest()
        backdate(tx, run.id, ctx.now() - timedelta(hours=7))
    _run(capsys, "train", "alpha", "--reason", "go")
    (res,) = _decide_pending(ctx)
    assert res.verdict == "approve"
    # When the operator looks at costs
    code, out, _ = _run(capsys, "costs", "--json")
    data = json.loads(out)
    # Then today's and this month's spend count the held reservation, against the caps
    assert data["today"]["total_usd"] == pytest.approx(3.5) and data["today"]["cap_usd"] == 10.0
    assert data["this_month"]["total_usd"] == pytest.approx(3.5) and data["caps"]["monthly_usd"] == 100.0
    (alpha_today,) = [r for r in data["by_day"] if r["model"] == "alpha"]
    assert alpha_today["runs"] == 2 and alpha_today["held_usd"] == pytest.approx(3.5)
    assert data["next_estimate_usd"] == {"alpha": 1.0, "young": 0.05}
    code, out, _ = _run(capsys, "costs")
    assert code == 0 and "today $3.50 of $10.00 daily cap (35 %)" in out and "(all)" in out


def _serving(ctx, model: str, *, accuracy: float, ret: float | None) -> None:
    """A production version (validated at 0.60) that served 10 predictions a minute for the last 6 hours."""
    now = ctx.now()
    with ctx.store.tx() as tx:
        tx.versions.add(model=model, version="1.0.0", major=1, minor=0, patch=0, status="production",
                        created_at=now - timedelta(days=30), deleted_at=None, artifact_sha256="0" * 64,
                        artifact_size=1, bump_kind="initial", bump_reason="test", parent_version=None,
                        data_start=None, data_end=None, data_rows=0, data_fingerprint="", feature_schema=[],
                        params={}, metrics={"baseline": {"accuracy": 0.60}}, git_commit=None, request_id=None,
                        decision_id=None, run_id=None, cost_usd=0.0)
        tx.aliases.move(model, "production", "1.0.0", actor="test", reason="seed", now=now - timedelta(days=30))
        start = now.replace(second=0, microsecond=0) - timedelta(minutes=360)
        correct, r = int(10 * accuracy), ret or 0.0
        tx.monitoring.add_buckets([{"model": model, "version": "1.0.0", "minute": start + timedelta(minutes=m), "n": 10,
                                    "tp": correct, "tn": 0, "fp": 10 - correct, "fn": 0, "ret_sum": 0.0,
                                    "ret_sq_sum": 10 * r * r, "unlabelled": 0} for m in range(360)])


def test_decisions_show_every_input_of_the_roi_formula(cli, capsys):
    # Given alpha at 0.40 (under its 0.55 floor, validated at 0.60), its outcomes carrying returns of +-0.2 %
    ctx = cli
    _serving(ctx, "alpha", accuracy=0.40, ret=0.002)
    _run(capsys, "train", "alpha", "--reason", "look")
    _decide_pending(ctx)
    # When the operator reads its decisions
    code, out, _ = _run(capsys, "decisions", "alpha")
    # Then every input of the formula is on its own line: predictions a day and where they come from, the
    # horizon, the gap and its source, the value basis with the notional, the estimate, the ROI and its threshold
    assert code == 0
    lines = {line.strip().split()[0]: line.strip() for line in out.splitlines() if line.strip()}
    assert lines["predictions"].startswith("predictions  14,400/day (3,600 served (labelled or not) in 360 minute "
                                           "buckets over 6 h; newest buckets of the last 30 d) x horizon 7 d = 100,800")
    assert lines["gap"] == ("gap          10 pt (measured 20, clamped to [0, 10]) (validated baseline - live accuracy) "
                            "x recovery 0.5 = 5 pt")
    assert lines["value"].startswith("value        returns: 2 x notional $1,000.00 x mean |return| 0.0016 "
                                     "(on 3,600 outcomes) = $3.19 a correct prediction")
    assert lines["benefit"].startswith("benefit      $16,085.35; estimate $1.00; ROI 1.61e+04 (threshold >= 1.5)")
    # (the 4-hour window holds 239 or 240 of the minutes, by the wall clock's seconds)
    assert re.match(r"floor        live 0\.400 < floor 0\.550 \(upper bound 0\.416 on 2,(390|400) outcomes\), "
                    r"below since \d{4}-\d\d-\d\dT\d\d:\d\d: 0\.0 h of 72 h before ROI yields$", lines["floor"])
    # and the JSON holds the same figures
    code, out, _ = _run(capsys, "decisions", "alpha", "--json")
    (d,) = json.loads(out)
    vm = d["detail"]["value_model"]
    assert vm["basis"] == "returns" and vm["notional_usd"] == 1000.0 and vm["horizon_days"] == 7.0
    assert vm["predictions_per_day"] == pytest.approx(14_400) and vm["min_roi"] == 1.5


def test_decisions_show_the_configured_value_without_returns(cli, capsys):
    ctx = cli
    _serving(ctx, "alpha", accuracy=0.60, ret=None)
    _run(capsys, "train", "alpha", "--reason", "look")
    _decide_pending(ctx)
    code, out, _ = _run(capsys, "decisions", "alpha")
    assert "value        no returns in the outcomes: 100 x value_per_accuracy_point_usd $1e-05 = $0.0010 a " \
           "correct prediction" in out
    assert "floor        live 0.600 >= floor 0.550" in out
