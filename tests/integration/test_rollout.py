"""Shadow and staged rollout on Postgres, in-process on a simulated clock.

The steps the workers run (validate, evaluate_rollouts, ingest) are driven through the
outbox with ``dispatch.drain``; the trading app serves every prediction through the
real ModelRouter and reports it through the real client. Live traffic follows market
regimes: a model of the regime in force scores ~0.60, one of an orthogonal regime ~0.50.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from retrain.core.clock import SimClock
from retrain.core.windows import Counts
from retrain.steps.dispatch import run_step
from retrain.steps.rollout_step import confirm_rollout, describe_rollout
from tests.conftest import T0, make_context
from tests.rollout_world import App, add_version, aliases, config, make_production, market, rollout_row, start_candidate

pytestmark = pytest.mark.timeout(120)
MODEL = "direction"


def _ctx(pg_url, tmp_path, **cfg):
    return make_context(pg_url, tmp_path, config=config(**cfg), clock=SimClock(T0))


def _given(ctx, prod_regime: str, cand_regime: str) -> str:
    add_version(ctx, "1.0.0", prod_regime)
    add_version(ctx, "1.1.0", cand_regime)
    make_production(ctx, "1.0.0")
    return start_candidate(ctx, "1.1.0")


def _events(ctx, kinds=None):
    with ctx.store.tx() as tx:
        return [(e.kind, e.message, e.data) for e in tx.audit.events(MODEL, limit=1000)
                if kinds is None or e.kind in kinds]


def test_a_better_candidate_goes_from_shadow_through_every_stage_to_production(pg_url, tmp_path):
    # Given production fitted on regime A, a candidate fitted on B, and live traffic in regime B
    ctx = _ctx(pg_url, tmp_path)
    run_id = _given(ctx, "A", "B")
    assert rollout_row(ctx, run_id).phase == "shadow"
    assert aliases(ctx)["candidate"] == ("1.1.0", 0.0)
    app = App(ctx, market([(timedelta(0), "B")]))

    # When the app serves for a while: production serves everything during shadow
    app.run(timedelta(minutes=25))
    assert app.served == {"1.0.0": 25 * 30} and rollout_row(ctx, run_id).phase == "shadow"
    # Then the shadow passes on the live rows and the canary stages follow one another
    shares = []

    def record(c):
        ro = rollout_row(c, run_id)
        if ro.phase == "canary" and (not shares or shares[-1] != ro.share_pct):
            shares.append(ro.share_pct)
        return ro.phase != "canary" and ro.phase != "shadow"

    app.run(timedelta(hours=4), until=record)
    app.close()
    ro = rollout_row(ctx, run_id)
    assert ro.phase == "promoted", (ro.phase, ro.outcome, ro.figures)
    assert shares == [10.0, 25.0, 50.0, 100.0]
    assert [h["action"] for h in ro.history] == ["pass", "advance", "advance", "advance", "complete"]
    shadow = ro.history[0]["figures"]
    assert shadow["rows"] >= 300 and shadow["relative"] > 0.02 and shadow["p_better"] <= 0.05
    for h in ro.history[1:]:
        f = h["figures"]
        assert f["canary_n"] >= 100 and f["minutes"] >= 20  # each stage met its minimums on labelled outcomes
    # And the candidate is production, the old one the rollback target, no canary left
    a = aliases(ctx)
    assert a["production"][0] == "1.1.0" and a["previous"][0] == "1.0.0"
    assert a["canary"] == (None, 0.0) and a["candidate"][0] is None
    with ctx.store.tx() as tx:
        assert tx.runs.get(run_id).state == "done"
        assert tx.versions.get(MODEL, "1.1.0").status == "production"
    # And the canary really served its shares of traffic
    assert app.served["1.1.0"] > 1000
    msgs = [m for k, m, _ in _events(ctx, ("validation", "rollout", "promotion"))]
    assert any("passed shadow" in m for m in msgs) and any("10% -> 25%" in m for m in msgs)
    assert msgs[-1] == "direction 1.1.0 is production (previous: 1.0.0)"


def test_a_worse_candidate_is_stopped_in_shadow_and_production_is_unchanged(pg_url, tmp_path):
    # Given a candidate whose holdout looked good (regime B) while live traffic stays in regime A
    ctx = _ctx(pg_url, tmp_path)
    run_id = _given(ctx, "A", "B")
    app = App(ctx, market([(timedelta(0), "A")]))
    # When it is scored in shadow on the live rows
    app.run(timedelta(hours=3), until=lambda c: rollout_row(c, run_id).phase != "shadow")
    app.close()
    # Then it is rejected with the figures after the minimum duration; it never served a prediction
    ro = rollout_row(ctx, run_id)
    assert ro.phase == "rejected"
    assert ro.finished_at - ro.started_at >= timedelta(minutes=30)
    f = ro.history[0]["figures"]
    assert f["relative"] < 0 and f["p_worse"] <= 0.05 and f["production_only"] > f["candidate_only"]
    assert set(app.served) == {"1.0.0"}
    a = aliases(ctx)
    assert a["production"][0] == "1.0.0" and a["candidate"][0] is None and a.get("canary", (None,))[0] is None
    with ctx.store.tx() as tx:
        run = tx.runs.get(run_id)
        assert (run.state, run.stage) == ("rejected", "shadow_rejected")
        assert tx.versions.get(MODEL, "1.1.0").status == "rejected"
    (kind, msg, data), = [e for e in _events(ctx, ("validation",)) if "rejected in shadow" in e[1]]
    assert "worse than production" in msg and data["figures"]["rows"] >= 300


def test_a_canary_that_turns_worse_at_25_percent_is_rolled_back_and_the_router_serves_production(pg_url, tmp_path):
    # Given a better candidate that reaches the 25 % stage
    ctx = _ctx(pg_url, tmp_path)
    run_id = _given(ctx, "A", "B")
    app = App(ctx, market([(timedelta(0), "B")]))
    app.run(timedelta(hours=3), until=lambda c: rollout_row(c, run_id).share_pct >= 25)
    assert rollout_row(ctx, run_id).share_pct == 25.0
    served_before = dict(app.served)
    app.router.refresh()  # the app's router polls the aliases (about once a second in production)
    assert app.router.routing.canary == "1.1.0" and app.router.routing.share_pct == 25.0
    # When the market turns against it (regime anti-B: the canary's model is now wrong more often)
    switch = ctx.now()
    app.market = market([(timedelta(0), "B"), (switch - T0, "anti-B")])
    app.run(timedelta(hours=2), until=lambda c: rollout_row(c, run_id).phase != "canary")
    # Then it is rolled back automatically at 25 %, before the stage's end, with the figures audited
    ro = rollout_row(ctx, run_id)
    assert ro.phase == "rolled_back", (ro.phase, ro.figures)
    assert ro.history[-1]["share_pct"] == 25.0 and ro.finished_at - switch < timedelta(minutes=60)
    f = ro.history[-1]["figures"]
    assert f["relative"] <= -0.10 and f["p_worse"] <= 0.05
    (kind, msg, data), = [e for e in _events(ctx, ("rollback",))]
    assert "rolled back automatically at 25%" in msg and data["figures"]["canary_n"] == f["canary_n"]
    a = aliases(ctx)
    assert a["canary"] == (None, 0.0) and a["production"][0] == "1.0.0"
    with ctx.store.tx() as tx:
        assert tx.runs.get(run_id).stage == "rolled_back" and tx.versions.get(MODEL, "1.1.0").status == "rolled_back"
    # And the router serves only production from its next refresh on
    app.router.refresh()
    assert app.router.routing.canary is None
    before = dict(app.served)
    app.run(timedelta(minutes=15), evaluate=False)
    app.close()
    assert app.served["1.1.0"] == before["1.1.0"] and app.served["1.0.0"] > before["1.0.0"]
    assert served_before["1.1.0"] > 0


def test_late_labels_hold_a_stage_until_they_arrive(pg_url, tmp_path):
    # Given a canary at 10 % whose labels arrive 45 minutes after each prediction
    ctx = _ctx(pg_url, tmp_path, validation={"shadow_enabled": False})
    run_id = _given(ctx, "A", "B")
    ro = rollout_row(ctx, run_id)
    assert (ro.phase, ro.share_pct) == ("canary", 10.0)  # shadow off: the canary starts at once
    app = App(ctx, market([(timedelta(0), "B")]), label_delay=timedelta(minutes=45))
    # When the stage's minimum duration has passed but no label has arrived yet
    app.run(timedelta(minutes=40))
    ro = rollout_row(ctx, run_id)
    # Then the stage is not judged: it waits for labelled canary outcomes
    assert (ro.phase, ro.share_pct) == ("canary", 10.0)
    assert ro.figures["canary_n"] == 0 and ro.figures["action"] == "wait"
    assert any("labelled canary outcomes" in n for n in ro.figures["needs"])
    assert app.served.get("1.1.0", 0) > 100  # plenty of unlabelled canary predictions already
    view = describe_rollout(ctx, MODEL)
    assert view["next"] == "wait" and any("labelled" in n for n in view["needs"])
    # And once the labels arrive it is judged on them and moves on
    app.run(timedelta(hours=1), until=lambda c: rollout_row(c, run_id).share_pct > 10)
    app.close()
    ro = rollout_row(ctx, run_id)
    assert ro.share_pct == 25.0 and ro.history[-1]["figures"]["canary_n"] >= 100
    assert ro.history[-1]["ended_at"] >= (T0 + timedelta(minutes=45)).isoformat()


def test_the_manual_gate_waits_for_retrain_promote_confirm(pg_url, tmp_path, capsys, monkeypatch):
    # Given a rollout with a manual gate between stages
    ctx = _ctx(pg_url, tmp_path, rollout={"manual_gate": True, "stages": [50, 100]})
    run_id = _given(ctx, "A", "B")
    app = App(ctx, market([(timedelta(0), "B")]))
    # When the shadow has passed its criteria
    app.run(timedelta(hours=1))
    ro = rollout_row(ctx, run_id)
    # Then it waits in shadow for a person, saying so
    assert (ro.phase, ro.gate) == ("shadow", "waiting")
    assert any("confirmation" in n for n in ro.figures["needs"])
    assert any("waits for confirmation" in m for _, m, _ in _events(ctx, ("rollout",)))
    # And `retrain rollout` shows the stage, the figures and what is needed
    from retrain.cli import main

    cfg_path = tmp_path / "gate.toml"
    cfg_path.write_text(_toml(manual_gate=True))
    monkeypatch.setenv("RETRAIN_DATABASE_URL", pg_url)
    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path))
    monkeypatch.setenv("RETRAIN_CONFIG", str(cfg_path))
    monkeypatch.setenv("RETRAIN_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    # The CLI reads the wall clock; here it must read the test's simulated one.
    import retrain.core.clock

    monkeypatch.setattr(retrain.core.clock, "SystemClock", lambda: ctx.clock)
    capsys.readouterr()
    assert main(["rollout", MODEL]) == 0
    text = capsys.readouterr().out
    assert "candidate 1.1.0 vs production 1.0.0" in text and "shadow" in text and "needs confirmation" in text
    assert main(["rollout", MODEL, "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["gate"] == "waiting" and view["figures"]["rows"] >= 300
    # When an operator confirms (in-process, on the simulated clock)
    res = confirm_rollout(ctx, MODEL, actor="alice", reason="figures look right")
    assert (res.action, res.phase, res.share_pct) == ("pass", "canary", 50.0)
    # Then the next gate waits again, and the CLI's confirmation passes it
    app.run(timedelta(hours=1))
    assert rollout_row(ctx, run_id).gate == "waiting" and rollout_row(ctx, run_id).share_pct == 50.0
    assert main(["promote", MODEL, "--confirm", "--actor", "bob"]) == 0
    assert "confirmed by bob" in capsys.readouterr().out
    assert rollout_row(ctx, run_id).share_pct == 100.0
    app.run(timedelta(hours=1), until=lambda c: rollout_row(c, run_id).phase != "canary")
    app.close()
    assert rollout_row(ctx, run_id).phase == "promoted"
    approvals = [(m, d) for k, m, d in _events(ctx, ("approval",))]
    assert len(approvals) == 2 and "confirmed at shadow" in approvals[0][0]


def test_an_emergency_on_the_canary_rolls_it_back_at_once(pg_url, tmp_path):
    # Given a canary at 10 % and two hours of production history
    ctx = _ctx(pg_url, tmp_path, validation={"shadow_enabled": False})
    run_id = _given(ctx, "A", "B")
    now = ctx.now()
    rows = []
    for m in range(-120, 10):
        minute = (now + timedelta(minutes=m)).replace(second=0, microsecond=0)
        rows.append(_bucket("1.0.0", minute, Counts(n=60, tp=18, tn=18, fp=12, fn=12)))
        if m >= 0:  # When the canary's answers collapse: 1 right out of 20 each minute
            rows.append(_bucket("1.1.0", minute, Counts(n=20, tp=1, tn=0, fp=10, fn=9)))
    with ctx.store.tx() as tx:
        tx.monitoring.add_buckets(rows)
    ctx.clock.advance(timedelta(minutes=10))
    run_step(ctx, "retrain.evaluate_rollouts", {"v": 1})
    # Then it is rolled back before the stage's minimum duration, naming the emergency
    ro = rollout_row(ctx, run_id)
    assert ro.phase == "rolled_back" and "emergency" in ro.outcome
    assert ro.history[-1]["figures"]["emergency"]["severity"] in ("HIGH", "CRITICAL")
    assert aliases(ctx)["canary"] == (None, 0.0)


def test_a_rollout_is_aborted_when_an_operator_rolls_back_outside_it(pg_url, tmp_path):
    from retrain.steps.promote import rollback

    # Given a canary at 10 %
    ctx = _ctx(pg_url, tmp_path, validation={"shadow_enabled": False})
    run_id = _given(ctx, "A", "B")
    # When an operator withdraws it with `retrain rollback`
    rollback(ctx, MODEL, None, actor="ops", reason="not today")
    run_step(ctx, "retrain.evaluate_rollouts", {"v": 1})
    # Then the rollout ends as aborted with the reason, production unchanged
    ro = rollout_row(ctx, run_id)
    assert ro.phase == "aborted" and "outside the rollout" in ro.outcome
    assert aliases(ctx)["production"][0] == "1.0.0"
    with ctx.store.tx() as tx:
        assert tx.runs.get(run_id).state == "rejected"


def _bucket(version, minute, c: Counts) -> dict:
    return {"model": MODEL, "version": version, "minute": minute, "n": c.n, "tp": c.tp, "fp": c.fp, "tn": c.tn,
            "fn": c.fn, "ret_sum": 0.0, "ret_sq_sum": 0.0, "unlabelled": 0}


def _toml(manual_gate: bool) -> str:
    feats = ", ".join(f'"f{i}"' for i in range(8))
    return f"""
[policy]
approval_days = 0
[models.direction]
entry_point = "retrain.examples.direction:train"
data_source = "sample"
features = [{feats}]
[models.direction.sample]
rate = 1.0
max_rows = 200000
[models.direction.drift]
enabled = false
[models.direction.validation]
shadow_min_hours = 0.5
shadow_max_hours = 3
shadow_min_rows = 300
[models.direction.rollout]
stages = [50, 100]
stage_min_minutes = 20
stage_min_samples = 100
stage_max_minutes = 180
manual_gate = {str(manual_gate).lower()}
"""


def test_with_the_staged_rollout_off_a_shadow_that_passes_promotes_at_once(pg_url, tmp_path):
    # Given shadow on and the canary stages off
    ctx = _ctx(pg_url, tmp_path, rollout={"enabled": False})
    run_id = _given(ctx, "A", "B")
    app = App(ctx, market([(timedelta(0), "B")]))
    # When the shadow passes
    app.run(timedelta(hours=1), until=lambda c: rollout_row(c, run_id).phase != "shadow")
    app.close()
    # Then the candidate is production at once, without ever serving as a canary
    assert rollout_row(ctx, run_id).phase == "promoted"
    assert aliases(ctx)["production"][0] == "1.1.0" and set(app.served) == {"1.0.0"}
