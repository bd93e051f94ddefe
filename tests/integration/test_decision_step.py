"""The decision step against real databases: snapshot, policy, record, reserve, enqueue.

Every rule of the policy is shown here through the step (``decide_request``), with
its state in the database and its configuration in the model file: the ``[policy]``
table and the ``[models.X.policy]`` overrides. The pure rules are covered in
depth by tests/unit/test_policy.py; these tests show the step loads the right
state, acts on the verdict and records it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from retrain.config import parse_config
from retrain.core.clock import SimClock
from retrain.core.domain import TRIGGER_PRIORITY, Decision, RetrainRequest, RuleResult, Severity, TriggerKind, Verdict
from retrain.core.errors import PayloadError, UnknownModelError
from retrain.core.payloads import ManualRequestPayload
from retrain.core.policy import RULES, ResourceReading
from retrain.steps.decide import decide_request, resolve_pending
from retrain.steps.requests import request_retraining, sync_models
from tests.conftest import make_context
from tests.runs import end_run, make_run

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=timezone.utc)  # a Wednesday noon, outside the off-peak window
AMPLE = ResourceReading(free_memory_mb=8000.0, cpu_load_pct=20.0, free_disk_mb=100_000.0)


def _model(**extra) -> dict:
    return {"entry_point": "retrain.examples.direction:train", "data_source": "retrain.examples.direction:history",
            "features": ["f0", "f1"], **extra}


def _config(policy: dict | None = None, **models: dict):
    """Two models; no first-week approval unless a test asks for it (``approval_days``)."""
    models = models or {"alpha": _model(), "beta": _model()}
    base = {"value_per_accuracy_point_usd": 1e-5, "approval_days": 0}
    return parse_config({"policy": {**base, **(policy or {})}, "models": models}, "decision test")


def _ctx(db_url, tmp_path, config=None, at: datetime = NOW):
    ctx = make_context(db_url, tmp_path, config=config or _config(), clock=SimClock(at))
    sync_models(ctx)
    return ctx


def _serve(ctx, model: str, *, deployed_days: float = 60.0, accuracy: float = 0.55, per_minute: int = 300,
           minutes: int = 24 * 60, every_minutes: int = 1, unlabelled: int = 0, ret: float | None = None) -> None:
    """A production version with a validated baseline of 0.60, serving ``per_minute`` labelled predictions
    (and ``unlabelled`` more) in ``minutes`` buckets ``every_minutes`` apart up to now; ``ret``: each outcome's
    return, in absolute value."""
    now = ctx.now()
    with ctx.store.tx() as tx:
        tx.models.set_deployed(model, now - timedelta(days=deployed_days))
        tx.versions.add(model=model, version="1.0.0", major=1, minor=0, patch=0, status="production",
                        created_at=now - timedelta(days=deployed_days), deleted_at=None, artifact_sha256="0" * 64,
                        artifact_size=1, bump_kind="initial", bump_reason="test", parent_version=None,
                        data_start=None, data_end=None, data_rows=0, data_fingerprint="", feature_schema=[],
                        params={}, metrics={"baseline": {"accuracy": 0.60}}, git_commit=None, request_id=None,
                        decision_id=None, run_id=None, cost_usd=0.0)
        tx.aliases.move(model, "production", "1.0.0", actor="test", reason="seed", now=now - timedelta(days=1))
        correct = int(per_minute * accuracy)
        start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes * every_minutes)
        r = ret or 0.0
        tx.monitoring.add_buckets([{"model": model, "version": "1.0.0", "minute": start + timedelta(minutes=m * every_minutes),
                                    "n": per_minute, "tp": correct, "tn": 0, "fp": per_minute - correct, "fn": 0,
                                    "ret_sum": r * (2 * correct - per_minute), "ret_sq_sum": r * r * per_minute,
                                    "unlabelled": unlabelled} for m in range(minutes)])


def _past_run(ctx, model: str, ago: timedelta, cost: float | None = 1.0, state: str = "done") -> str:
    at = ctx.now() - ago
    with ctx.store.tx() as tx:
        rid = make_run(tx, model, at, state=state).id
        if cost is not None:
            tx.ledger.add(rid, model, "reservation", cost, at)
            if state != "queued":
                tx.ledger.add(rid, model, "release", -cost, at)
                tx.ledger.add(rid, model, "actual", cost, at)
    return rid


def _request(ctx, model: str = "alpha", trigger: TriggerKind = TriggerKind.PERFORMANCE, **evidence) -> str:
    if trigger is TriggerKind.PERFORMANCE and not evidence:
        evidence = {"baseline_accuracy": 0.60, "current_accuracy": 0.52}
    req = RetrainRequest(id=str(uuid.uuid4()), model=model, trigger=trigger, created_at=ctx.now(), reason="test",
                         evidence=evidence)
    with ctx.store.tx() as tx:
        rid, _ = tx.requests.open(req)
    return rid


def _decision(ctx, res) -> Decision:
    with ctx.store.tx() as tx:
        row = tx.decisions.get(res.decision_id)
        return Decision(request_id=row.request_id, model=row.model, verdict=Verdict(row.verdict),
                        decided_at=row.decided_at, rules=tuple(RuleResult.from_json(r) for r in row.rules),
                        defer_until=row.defer_until, estimated_cost_usd=row.estimated_cost_usd,
                        detail=row.detail or {})


def _rule(decision, name):
    return next(r for r in decision.rules if r.rule == name)


# -- the approve path ------------------------------------------------------------------------------


def test_an_approval_records_every_rule_reserves_the_estimate_and_enqueues_training(any_db_url, tmp_path):
    # Given a healthy model whose accuracy fell from 0.60 to 0.52
    ctx = _ctx(any_db_url, tmp_path)
    _serve(ctx, "alpha")
    rid = _request(ctx)
    # When the decision runs
    res = decide_request(ctx, rid, AMPLE)
    # Then it approves, with every rule listed with its value and limit
    assert res.verdict == "approve" and res.run_id
    d = _decision(ctx, res)
    assert tuple(r.rule for r in d.rules) == RULES
    assert _rule(d, "budget_daily").limit == 10.0 and _rule(d, "cooldown").limit == 6.0
    assert d.detail["estimate"]["source"].startswith("first_run_cost_usd")
    assert d.detail["value_model"]["gap_points"] == pytest.approx(8.0)
    # and one transaction reserved the estimate, queued the run and left retrain.train in the outbox
    with ctx.store.tx() as tx:
        run = tx.runs.get(res.run_id)
        assert run.state == "queued" and run.decision_id == res.decision_id
        assert tx.ledger.held_reservation(run.id) == pytest.approx(ctx.config.model("alpha").first_run_cost_usd)
        assert tx.requests.get(rid).status == "approved" and tx.requests.get(rid).run_id == run.id
        (msg,) = [m for m in tx.outbox.pending() if m.task == "retrain.train"]
        assert msg.payload == {"v": 1, "run_id": run.id} and msg.priority == TRIGGER_PRIORITY[TriggerKind.PERFORMANCE]
        events = tx.audit.log(model="alpha")
    kinds = [e.kind for e in events]
    assert "decision" in kinds and "run" in kinds
    decision_event = next(e for e in events if e.kind == "decision")
    assert [r["rule"] for r in decision_event.data["rules"]] == list(RULES)
    assert decision_event.data["verdict"] == "approve"


def test_a_repeated_message_is_decided_once(sqlite_url, tmp_path):
    # Given a request that was decided
    ctx = _ctx(sqlite_url, tmp_path)
    rid = _request(ctx, trigger=TriggerKind.MANUAL)
    first = decide_request(ctx, rid, AMPLE)
    # When the same message arrives again
    again = decide_request(ctx, rid, AMPLE)
    # Then nothing new is decided, reserved or started
    assert not first.skipped and again.skipped and again.summary.startswith("already")
    with ctx.store.tx() as tx:
        assert len(tx.decisions.newest()) == 1 and len(tx.runs.newest()) <= 1
    with pytest.raises(PayloadError):
        decide_request(ctx, "no-such-request")


def test_the_estimate_is_the_moving_average_of_measured_runs(sqlite_url, tmp_path):
    # Given a model whose past runs cost $1, $2 and $4 (the ledger's actual rows)
    ctx = _ctx(sqlite_url, tmp_path)
    for days, cost in ((20, 1.0), (10, 2.0), (5, 4.0)):
        _past_run(ctx, "alpha", timedelta(days=days), cost)
    # When a request is decided
    res = decide_request(ctx, _request(ctx, trigger=TriggerKind.MANUAL), AMPLE)
    # Then the estimate is their EMA (alpha 0.3, oldest first), and that is what is reserved
    ema = 0.3 * 4.0 + 0.7 * (0.3 * 2.0 + 0.7 * 1.0)
    d = _decision(ctx, res)
    assert d.estimated_cost_usd == pytest.approx(ema)
    assert d.detail["estimate"]["past_usd"] == [1.0, 2.0, 4.0]
    with ctx.store.tx() as tx:
        assert tx.ledger.held_reservation(res.run_id) == pytest.approx(ema)


# -- each rule through the step ---------------------------------------------------------------------


def test_cooldown_and_the_daily_limit_defer_until_they_pass(sqlite_url, tmp_path):
    # Given alpha started a run 2 h ago, beta twice in the last day (7 h and 20 h ago)
    ctx = _ctx(sqlite_url, tmp_path)
    _past_run(ctx, "alpha", timedelta(hours=2))
    _past_run(ctx, "beta", timedelta(hours=7))
    _past_run(ctx, "beta", timedelta(hours=20))
    # When each gets a request
    a = _decision(ctx, decide_request(ctx, _request(ctx, "alpha", TriggerKind.DRIFT), AMPLE))
    b = _decision(ctx, decide_request(ctx, _request(ctx, "beta", TriggerKind.DRIFT), AMPLE))
    # Then alpha waits for its cooldown and beta for its oldest run to leave the 24 h window
    assert a.verdict.value == "defer" and a.defer_until == NOW + timedelta(hours=4)
    assert _rule(a, "cooldown").value == pytest.approx(2.0) and not _rule(a, "cooldown").passed
    assert b.verdict.value == "defer" and b.defer_until == NOW + timedelta(hours=4)
    assert _rule(b, "daily_runs").value == 2 and _rule(b, "daily_runs").limit == 2
    with ctx.store.tx() as tx:
        assert {r.status for r in tx.requests.newest()} == {"deferred"}


def test_per_model_overrides_apply_to_their_model_only(sqlite_url, tmp_path):
    # Given [policy] sets a 1 h cooldown and beta's own table sets 12 h; both ran 3 h ago
    cfg = _config({"cooldown_hours": 1.0}, alpha=_model(), beta=_model(policy={"cooldown_hours": 12.0}))
    ctx = _ctx(sqlite_url, tmp_path, cfg)
    for m in ("alpha", "beta"):
        _past_run(ctx, m, timedelta(hours=3))
    # When each gets a request
    a = decide_request(ctx, _request(ctx, "alpha", TriggerKind.MANUAL), AMPLE)
    b = _decision(ctx, decide_request(ctx, _request(ctx, "beta", TriggerKind.MANUAL), AMPLE))
    # Then alpha follows the global table and beta its own
    assert a.verdict == "approve"
    assert b.verdict.value == "defer" and _rule(b, "cooldown").limit == 12.0


def test_the_global_daily_run_cap_counts_every_model(sqlite_url, tmp_path):
    # Given at most 2 runs a day across all models, and alpha and beta ran once each today
    ctx = _ctx(sqlite_url, tmp_path, _config({"max_runs_global_per_day": 2}))
    _past_run(ctx, "alpha", timedelta(hours=10))
    _past_run(ctx, "beta", timedelta(hours=9))
    # When alpha asks again
    d = _decision(ctx, decide_request(ctx, _request(ctx, "alpha", TriggerKind.MANUAL), AMPLE))
    # Then it waits for midnight UTC
    assert d.verdict.value == "defer" and d.defer_until == datetime(2026, 6, 11, tzinfo=timezone.utc)
    assert (_rule(d, "global_daily_runs").value, _rule(d, "global_daily_runs").limit) == (2, 2)


def test_budgets_global_and_per_model_are_checked_against_the_ledger(any_db_url, tmp_path):
    # Given $9.40 spent today ($9.00 by gamma, $0.40 by beta), and beta capped at $0.50 a month
    cfg = _config({}, alpha=_model(first_run_cost_usd=1.0), gamma=_model(),
                  beta=_model(policy={"model_monthly_budget_usd": 0.5}))
    ctx = _ctx(any_db_url, tmp_path, cfg)
    _past_run(ctx, "gamma", timedelta(hours=10), cost=9.0)
    _past_run(ctx, "beta", timedelta(hours=11), cost=0.4)
    # When alpha asks for its first run ($1, the configured default) and beta for one ($0.40, its average)
    a = _decision(ctx, decide_request(ctx, _request(ctx, "alpha", TriggerKind.MANUAL), AMPLE))
    b = _decision(ctx, decide_request(ctx, _request(ctx, "beta", TriggerKind.MANUAL), AMPLE))
    # Then alpha's run does not fit today's global cap and waits for midnight,
    assert a.verdict.value == "defer" and a.defer_until == datetime(2026, 6, 11, tzinfo=timezone.utc)
    assert _rule(a, "budget_daily").value == pytest.approx(10.4)
    assert _rule(a, "budget_monthly").value == pytest.approx(10.4) and _rule(a, "budget_monthly").passed
    # and beta's own monthly cap holds it until July, although its run fits today's global cap
    assert b.verdict.value == "defer" and b.defer_until == datetime(2026, 7, 1, tzinfo=timezone.utc)
    assert b.estimated_cost_usd == pytest.approx(0.4)
    assert _rule(b, "model_budget_monthly").value == pytest.approx(0.8) and not _rule(b, "model_budget_monthly").passed
    assert _rule(b, "budget_daily").passed and _rule(b, "budget_daily").value == pytest.approx(9.8)


def test_a_run_that_can_never_fit_and_a_run_worth_too_little_are_rejected(sqlite_url, tmp_path):
    # Given beta estimated at $12 (more than the $10 daily cap), and alpha serving 10 predictions a day
    cfg = _config({}, alpha=_model(), beta=_model(first_run_cost_usd=12.0))
    ctx = _ctx(sqlite_url, tmp_path, cfg)
    _serve(ctx, "alpha", per_minute=1, minutes=10, every_minutes=144)
    # When each gets a request
    b = _decision(ctx, decide_request(ctx, _request(ctx, "beta", TriggerKind.MANUAL), AMPLE))
    a = _decision(ctx, decide_request(ctx, _request(ctx, "alpha"), AMPLE))
    # Then both are rejected with the reason, and the ROI's inputs are in the record
    assert b.verdict.value == "reject" and b.detail["reject_rules"] == ["budget_daily"]
    assert a.verdict.value == "reject" and a.detail["reject_rules"] == ["roi"]
    vm = a.detail["value_model"]
    assert vm["predictions_per_day"] == pytest.approx(10.0) and vm["roi"] < 1.5
    with ctx.store.tx() as tx:
        assert {r.status for r in tx.requests.newest()} == {"rejected"}
        assert tx.runs.newest() == []


def test_a_scheduled_request_waits_for_the_off_peak_window_and_a_performance_one_does_not(sqlite_url, tmp_path):
    ctx = _ctx(sqlite_url, tmp_path)
    _serve(ctx, "alpha", accuracy=0.50)
    s = _decision(ctx, decide_request(ctx, _request(ctx, "alpha", TriggerKind.SCHEDULE), AMPLE))
    assert s.verdict.value == "defer" and s.defer_until == datetime(2026, 6, 11, 1, 0, tzinfo=timezone.utc)
    assert _rule(s, "offpeak").limit == "01:00-05:00 UTC"
    p = decide_request(ctx, _request(ctx, "beta", TriggerKind.PERFORMANCE), AMPLE)
    assert p.verdict == "approve"


def test_resources_reported_by_a_training_node_win_over_the_local_reading(sqlite_url, tmp_path):
    # Given a training node that reported 300 MB free a minute ago (the deciding node has plenty)
    ctx = _ctx(sqlite_url, tmp_path)
    with ctx.store.tx() as tx:
        tx.controls.report_resources("train-1", {"free_memory_mb": 300.0, "cpu_load_pct": 10.0, "free_disk_mb": 50_000.0},
                                     NOW - timedelta(minutes=1))
    # When a request is decided
    d = _decision(ctx, decide_request(ctx, _request(ctx, trigger=TriggerKind.MANUAL), AMPLE))
    # Then it waits 5 minutes for memory, and the record says where the reading came from
    assert d.verdict.value == "defer" and d.defer_until == NOW + timedelta(minutes=5)
    assert _rule(d, "resources").value["free_memory_mb"] == 300.0
    assert d.detail["resources"] == "reported by train-1"
    # and a report older than 10 minutes says nothing: the local reading is used
    ctx.clock.advance(timedelta(minutes=30))
    res = decide_request(ctx, _request(ctx, "beta", TriggerKind.MANUAL), AMPLE)
    assert res.verdict == "approve" and _decision(ctx, res).detail["resources"] == "read locally"


def test_a_young_deployment_waits_for_an_operator_who_approves_or_rejects(any_db_url, tmp_path):
    # Given models deployed two days ago (inside the first week of seven)
    ctx = _ctx(any_db_url, tmp_path, _config({"approval_days": 7}))
    _serve(ctx, "alpha", deployed_days=2)
    _serve(ctx, "beta", deployed_days=2)
    first = decide_request(ctx, _request(ctx, "alpha"), AMPLE)
    other = decide_request(ctx, _request(ctx, "beta"), AMPLE)
    assert first.verdict == other.verdict == "pending_approval"
    # When an operator approves the first (by a prefix of the decision id, as the CLI shows it)
    ok = resolve_pending(ctx, first.decision_id[:8], approve=True, actor="alice", reason="looked at it")
    # Then the approval is recorded and the request is decided again, this time approved
    with ctx.store.tx() as tx:
        msgs = [m for m in tx.outbox.pending() if m.task == "retrain.decide"]
        assert tx.requests.get(first.request_id).evidence["approved_by"] == "alice"
        assert tx.decisions.get(first.decision_id).resolved_by == "alice"
    assert ok.verdict == "approve" and [m.payload["request_id"] for m in msgs] == [first.request_id]
    again = decide_request(ctx, first.request_id, AMPLE)
    assert again.verdict == "approve" and "approved by alice" in _rule(_decision(ctx, again), "approval").detail
    # and when another rejects the second, with a reason, it is closed
    with pytest.raises(PayloadError):
        resolve_pending(ctx, other.request_id, approve=False, actor="bob")
    resolve_pending(ctx, other.request_id, approve=False, actor="bob", reason="not now")
    with ctx.store.tx() as tx:
        assert tx.requests.get(other.request_id).status == "rejected"
        approvals = tx.audit.log(kinds=["approval"])
    assert [(e.actor, e.data["approved"]) for e in approvals] == [("alice", True), ("bob", False)]
    with pytest.raises(PayloadError, match="not waiting"):
        resolve_pending(ctx, other.request_id, approve=True, actor="bob")


def test_an_emergency_bypasses_approval_cooldown_and_limits_and_the_bypass_is_audited(sqlite_url, tmp_path):
    # Given a young deployment (first week) that ran an hour ago and twice today
    ctx = _ctx(sqlite_url, tmp_path, _config({"approval_days": 7}))
    _serve(ctx, "alpha", deployed_days=1, accuracy=0.45)
    _past_run(ctx, "alpha", timedelta(hours=1))
    _past_run(ctx, "alpha", timedelta(hours=3))
    # When an emergency fires
    res = decide_request(ctx, _request(ctx, "alpha", TriggerKind.EMERGENCY), AMPLE)
    # Then it is approved, each bypass is in the decision and in its own audit event
    assert res.verdict == "approve"
    d = _decision(ctx, res)
    bypassed = {r.rule for r in d.rules if r.bypassed}
    assert {"approval", "cooldown", "daily_runs"} <= bypassed
    with ctx.store.tx() as tx:
        (event,) = tx.audit.log(kinds=["bypass"])
    # (noon is outside the off-peak window too: not a rule for emergencies, so recorded as bypassed)
    assert set(event.data["would_have_failed"]) == {"approval", "cooldown", "daily_runs", "offpeak"}
    assert event.data["why"] == "emergency"


def test_pausing_an_unknown_model_names_it_and_the_configured_ones(sqlite_url, tmp_path):
    # Given a store that knows alpha and beta
    ctx = _ctx(sqlite_url, tmp_path)
    # When an unknown model is paused, Then the error is ours and names it and the known ones
    with pytest.raises(UnknownModelError, match=r"unknown model 'gamma'; configured: alpha, beta"):
        with ctx.store.tx() as tx:
            tx.models.set_paused("gamma", True, "ops", "typo", NOW)


def test_pause_one_model_or_all_rejects_with_reason_paused(sqlite_url, tmp_path):
    ctx = _ctx(sqlite_url, tmp_path)
    with ctx.store.tx() as tx:
        tx.models.set_paused("alpha", True, "ops", "incident 42", NOW)
    a = _decision(ctx, decide_request(ctx, _request(ctx, "alpha", TriggerKind.EMERGENCY), AMPLE))
    b = decide_request(ctx, _request(ctx, "beta", TriggerKind.MANUAL), AMPLE)
    assert a.verdict.value == "reject" and a.detail["reject_rules"] == ["paused"] and b.verdict == "approve"
    with ctx.store.tx() as tx:
        tx.models.set_paused("alpha", False, "ops", "incident over", NOW)
        tx.models.set_paused(None, True, "ops", "freeze", NOW)
    c = _decision(ctx, decide_request(ctx, _request(ctx, "alpha", TriggerKind.MANUAL), AMPLE))
    assert c.verdict.value == "reject" and _rule(c, "paused").detail == "all retraining is paused"
    with ctx.store.tx() as tx:
        admin = [e.message for e in tx.audit.log(kinds=["admin"])]
    assert len(admin) == 3 and "incident 42" in admin[0] and "all models" in admin[2]


def test_a_request_for_a_model_with_a_run_in_flight_joins_it(sqlite_url, tmp_path):
    ctx = _ctx(sqlite_url, tmp_path)
    first = decide_request(ctx, _request(ctx, "alpha", TriggerKind.MANUAL), AMPLE)
    second = decide_request(ctx, _request(ctx, "alpha", TriggerKind.DRIFT), AMPLE)
    assert second.verdict == "coalesced" and second.run_id == first.run_id
    with ctx.store.tx() as tx:
        assert tx.requests.get(second.request_id).run_id == first.run_id
        assert len(tx.runs.newest()) == 1


def test_an_override_with_a_reason_skips_budgets_and_roi_and_one_without_is_rejected(sqlite_url, tmp_path):
    # Given the day's budget spent
    ctx = _ctx(sqlite_url, tmp_path, _config({}, alpha=_model(first_run_cost_usd=1.0)))
    _serve(ctx, "alpha")
    _past_run(ctx, "alpha", timedelta(hours=7), cost=9.9)
    # When an operator forces a retraining with a reason, and another without one
    forced = request_retraining(ctx, ManualRequestPayload(model="alpha", reason="desk asked", requested_by="carol",
                                                          override_budget=True, override_reason="desk asked"))
    res = decide_request(ctx, forced.request_id, AMPLE)
    # Then the first is approved as manual, with the override and who gave it recorded
    d = _decision(ctx, res)
    assert res.verdict == "approve" and "carol" in d.detail["override"]
    assert {r.rule for r in d.rules if r.bypassed} >= {"budget_daily", "budget_monthly", "roi"}
    with ctx.store.tx() as tx:
        assert tx.runs.get(res.run_id).trigger == "manual"
        (bypass,) = tx.audit.log(kinds=["bypass"])
        (request_event,) = tx.audit.log(kinds=["request"])
    assert bypass.actor == "carol" and "desk asked" in bypass.message
    assert request_event.data["override_reason"] == "desk asked"
    ctx.clock.advance(timedelta(hours=7))
    with ctx.store.tx() as tx:
        end_run(tx, res.run_id, "done", ctx.now())
    loud = request_retraining(ctx, ManualRequestPayload(model="alpha", reason="x", requested_by="dave",
                                                        override_budget=True))
    d2 = _decision(ctx, decide_request(ctx, loud.request_id, AMPLE))
    assert d2.verdict.value == "reject" and "budget_override" in d2.detail["reject_rules"]
    assert not _rule(d2, "budget_override").passed and not d2.detail.get("override")


def test_a_global_configuration_change_is_audited_with_what_changed(sqlite_url, tmp_path):
    ctx = _ctx(sqlite_url, tmp_path)
    ctx.config = _config({"daily_budget_usd": 20.0})
    sync_models(ctx)
    sync_models(ctx)  # a second worker starting with the same file records nothing new
    with ctx.store.tx() as tx:
        events = tx.audit.log(kinds=["config"])
    globals_ = [e for e in events if e.model is None]
    assert len(globals_) == 2 and globals_[1].data["changed"] == ["policy.daily_budget_usd"]


# -- the value model's inputs from the store (issue 14) -------------------------------------------------


def _vm(ctx, model: str = "alpha", trigger: TriggerKind = TriggerKind.PERFORMANCE, **evidence) -> dict:
    return _decision(ctx, decide_request(ctx, _request(ctx, model, trigger, **evidence), AMPLE)).detail["value_model"]


def test_predictions_are_counted_from_what_is_served_though_labels_lag_a_day(any_db_url, tmp_path):
    # Given one prediction a day for 20 days, whose outcomes arrive a day late: nothing in the last 24 h
    ctx = _ctx(any_db_url, tmp_path)
    _serve(ctx, "alpha", per_minute=1, minutes=20, every_minutes=1440)
    # When a request is decided
    vm = _vm(ctx)
    # Then the model serves one prediction a day (the last 24 h of buckets would say 0)
    assert vm["predictions_per_day"] == pytest.approx(1.0)
    assert vm["predictions"] == pytest.approx(7.0)
    assert "20 minute buckets over 20 d" in vm["predictions_source"]


def test_unlabelled_predictions_count_and_5000_a_second_reads_as_such(any_db_url, tmp_path):
    # Given alpha at 5,000 predictions a second for 25 hours, beta with 1 labelled and 4 unlabelled a minute
    ctx = _ctx(any_db_url, tmp_path)
    _serve(ctx, "alpha", per_minute=300_000, minutes=1500)
    _serve(ctx, "beta", per_minute=1, unlabelled=4, minutes=120)
    # When each is decided, Then what is served is counted, labelled or not (alpha from its newest 1,440 buckets)
    assert _vm(ctx, "alpha")["predictions_per_day"] == pytest.approx(5000 * 86400)
    assert _vm(ctx, "beta")["predictions_per_day"] == pytest.approx(5 * 1440)


def test_returns_in_the_outcomes_value_the_benefit_with_the_notional(sqlite_url, tmp_path):
    # Given outcomes with returns of +-0.1 %, 288 predictions a day, and a $5,000 notional
    ctx = _ctx(sqlite_url, tmp_path, _config({"notional_usd": 5000.0}))
    _serve(ctx, "alpha", per_minute=1, minutes=300, every_minutes=5, ret=0.001)
    _serve(ctx, "beta", per_minute=1, minutes=300, every_minutes=5)
    # When each is decided
    with_returns, without = _vm(ctx, "alpha"), _vm(ctx, "beta")
    # Then alpha's correct prediction is worth 2 x $5,000 x mean |r| (0.8 x RMS), beta's the configured $0.001
    assert with_returns["basis"] == "returns" and with_returns["notional_usd"] == 5000.0
    assert with_returns["mean_abs_return"] == pytest.approx(0.001 * 0.7978845608, rel=1e-6)
    assert with_returns["value_per_correct_usd"] == pytest.approx(2 * 5000 * 0.001 * 0.7978845608, rel=1e-6)
    assert with_returns["returns_measured_on"] == 300
    assert without["basis"] == "per_correct" and without["value_per_correct_usd"] == pytest.approx(1e-3)
    assert without["predictions_per_day"] == pytest.approx(288.0)


def test_the_floor_clock_runs_from_the_first_finding_and_restarts_after_a_retraining(any_db_url, tmp_path):
    # Given alpha, 10 predictions a day without returns, at 0.45 on 5,000 outcomes (floor 0.55, baseline 0.60):
    # a $0.05 training is worth $0.0035 to it, so ROI alone would never retrain it
    ctx = _ctx(any_db_url, tmp_path)
    _serve(ctx, "alpha", per_minute=1, minutes=10, every_minutes=144)
    below = {"baseline_accuracy": 0.60, "current_accuracy": 0.45, "n": 5000}

    def decide_now(**ev):
        return _decision(ctx, decide_request(ctx, _request(ctx, "alpha", **(ev or below)), AMPLE))

    # When it is first found below its floor, and again 71 h later, Then ROI rejects both
    first = decide_now()
    assert first.verdict.value == "reject" and first.detail["value_model"]["below_floor"] is True
    ctx.clock.advance(timedelta(hours=71))
    second = decide_now()
    assert second.verdict.value == "reject" and "71.0 h of 72 h" in _rule(second, "roi").detail
    # When 72 h have passed since the first finding, Then ROI yields, and the audit says why
    ctx.clock.advance(timedelta(hours=1))
    third = decide_now()
    assert third.verdict.value == "approve" and _rule(third, "roi").bypassed
    assert third.detail["value_model"]["below_floor_since"] == NOW.isoformat()
    with ctx.store.tx() as tx:
        (bypass,) = tx.audit.log(kinds=["bypass"])
        end_run(tx, tx.runs.newest()[0].id, "rejected", ctx.now() + timedelta(hours=30))
    assert "approved past roi (below the accuracy floor 0.550 for 72.0 h" in bypass.message
    # When the retraining ended and the model is still below, Then the clock starts again
    ctx.clock.advance(timedelta(hours=31))
    after_run = decide_now()
    assert after_run.verdict.value == "reject"
    assert after_run.detail["value_model"]["below_floor_since"] == ctx.now().isoformat()
    # and a decision that finds it at its floor stops the clock: the next finding starts it afresh
    ctx.clock.advance(timedelta(hours=40))
    decide_now(baseline_accuracy=0.60, current_accuracy=0.56, n=5000)
    ctx.clock.advance(timedelta(hours=40))
    again = decide_now()
    assert again.verdict.value == "reject"
    assert again.detail["value_model"]["below_floor_since"] == ctx.now().isoformat()


def test_a_critical_emergency_is_approved_past_roi_through_the_step(any_db_url, tmp_path):
    # Given alpha at its baseline (nothing to recover), and a CRITICAL emergency (a collapse in returns)
    ctx = _ctx(any_db_url, tmp_path)
    _serve(ctx, "alpha", accuracy=0.60)
    req = RetrainRequest(id=str(uuid.uuid4()), model="alpha", trigger=TriggerKind.EMERGENCY, created_at=ctx.now(),
                         reason="returns 50 sigma below", evidence={"z": 50.0}, severity=Severity.CRITICAL)
    with ctx.store.tx() as tx:
        rid, _ = tx.requests.open(req)
    # When it is decided
    res = decide_request(ctx, rid, AMPLE)
    # Then it is approved, ROI bypassed, and the audit says it yielded to the CRITICAL emergency
    # (at noon the emergency is also past the off-peak window, as any emergency is)
    d = _decision(ctx, res)
    assert res.verdict == "approve" and _rule(d, "roi").bypassed and not _rule(d, "roi").passed
    assert d.detail["value_model"]["gap_points"] == 0.0
    with ctx.store.tx() as tx:
        (bypass,) = tx.audit.log(kinds=["bypass"])
    assert bypass.data["why"] == "emergency; CRITICAL emergency"
    assert bypass.data["would_have_failed"] == ["offpeak", "roi"]
