"""Emergencies act (issue 14): abort a rollout, go back to ``previous``, one retraining per episode,
and the post-promotion watch. On Postgres, through the real sweep, rollout and decision steps,
on a simulated clock; live results are written as the ingest step's metric buckets.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from retrain.core.clock import SimClock
from retrain.core.domain import new_id
from retrain.core.policy import ResourceReading
from retrain.steps.decide import decide_request
from retrain.steps.requests import sync_models
from retrain.steps.sweep import sweep
from tests.conftest import T0, make_context
from tests.rollout_world import MODEL, add_version, aliases, config, make_production, rollout_row, start_candidate
from tests.runs import end_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NOW = T0
ROOM = ResourceReading(free_memory_mb=100_000, cpu_load_pct=0, free_disk_mb=1_000_000)


def _ctx(pg_url, tmp_path, *, emergency: bool = True, **cfg):
    model = {"thresholds": {"min_samples": 1000}, "emergency": {"enabled": emergency}, **cfg}
    ctx = make_context(pg_url, tmp_path, config=config(**model), clock=SimClock(NOW))
    sync_models(ctx)
    return ctx


def _live(ctx, version: str, start, minutes: int, accuracy: float, per_minute: int = 60, seed: int = 0) -> None:
    """``minutes`` minute buckets of ``version`` from ``start``, each at ``accuracy`` (binomial noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(minutes):
        hits = int(rng.binomial(per_minute, accuracy))
        tp = hits // 2
        rows.append({"model": MODEL, "version": version, "minute": start + timedelta(minutes=i), "n": per_minute,
                     "tp": tp, "tn": hits - tp, "fp": (per_minute - hits) // 2,
                     "fn": per_minute - hits - (per_minute - hits) // 2, "ret_sum": 0.0, "ret_sq_sum": 0.0,
                     "unlabelled": 0})
    with ctx.store.tx() as tx:
        tx.monitoring.add_buckets(rows)


def _collapse(ctx, version: str, *, history_minutes: int = 600, seed: int = 0) -> None:
    """Hours at 0.60, then 15 minutes at 0.10 ending now: a CRITICAL emergency."""
    now = ctx.now()
    _live(ctx, version, now - timedelta(minutes=history_minutes + 15), history_minutes, 0.60, seed=seed)
    _live(ctx, version, now - timedelta(minutes=15), 15, 0.10, seed=seed + 1)


def _baseline(ctx, version: str, accuracy: float) -> None:
    with ctx.store.tx() as tx:
        row = tx.versions.get(MODEL, version)
        tx.versions.update(row, metrics={**row.metrics, "baseline": {"accuracy": accuracy}})


def _previous(ctx, version: str) -> None:
    with ctx.store.tx() as tx:
        tx.aliases.move(MODEL, "previous", version, actor="test", reason="given", now=ctx.now())


def _emergency_requests(ctx):
    with ctx.store.tx() as tx:
        return [r for r in tx.requests.newest(MODEL) if r.trigger == "emergency"]


def _events(ctx, kind: str):
    with ctx.store.tx() as tx:
        return [(e.actor, e.message, e.data) for e in tx.audit.events(MODEL, limit=1000, kind=kind)]


# ----------------------------------------------------------------------------- abort
@pytest.mark.parametrize("shadow", [True, False], ids=["shadow", "canary"])
def test_an_emergency_on_production_aborts_the_rollout_and_its_retraining_starts(pg_url, tmp_path, shadow):
    # Given a candidate in shadow (or a canary at 10 %) against production 1.0.0
    ctx = _ctx(pg_url, tmp_path, validation={"shadow_enabled": shadow})
    add_version(ctx, "1.0.0", "A")
    add_version(ctx, "1.1.0", "B")
    make_production(ctx, "1.0.0")
    run_id = start_candidate(ctx, "1.1.0")
    assert rollout_row(ctx, run_id).phase == ("shadow" if shadow else "canary")
    # When production collapses and the sweep runs
    _collapse(ctx, "1.0.0")
    result = sweep(ctx)
    # Then the rollout is aborted at once: no candidate or canary left, share 0 %, the emergency named
    ro = rollout_row(ctx, run_id)
    assert ro.phase == "aborted" and ro.share_pct == 0.0 and "emergency (CRITICAL) on production 1.0.0" in ro.outcome
    assert result.aborted == [{"model": MODEL, "run_id": run_id, "phase": "aborted"}]
    a = aliases(ctx)
    assert a["production"][0] == "1.0.0" and a.get("canary", (None, 0.0)) == (None, 0.0)
    assert a.get("candidate", (None,))[0] is None
    with ctx.store.tx() as tx:
        run = tx.runs.get(run_id)
        assert (run.state, run.stage) == ("rejected", "aborted")
        assert tx.versions.get(MODEL, "1.1.0").status == "withdrawn"
    [(actor, msg, data)] = [e for e in _events(ctx, "rollout") if "rollout ended (aborted)" in e[1]]
    assert "emergency" in msg and data["figures"]["emergency"]["severity"] == "CRITICAL"
    # And the emergency's retraining goes ahead instead of joining the aborted run
    [req] = _emergency_requests(ctx)
    decided = decide_request(ctx, req.id, ROOM)
    assert decided.verdict == "approve", decided.summary
    assert decided.run_id != run_id


# ----------------------------------------------------------------------------- back to previous
def _promoted_with_previous(ctx) -> None:
    """1.1.0 is production, 1.0.0 (validated at 0.60) the rollback target."""
    add_version(ctx, "1.0.0", "A")
    add_version(ctx, "1.1.0", "B")
    _baseline(ctx, "1.0.0", 0.60)
    _baseline(ctx, "1.1.0", 0.62)
    make_production(ctx, "1.1.0")
    _previous(ctx, "1.0.0")


def test_on_an_emergency_production_goes_back_to_a_previous_that_served_better(pg_url, tmp_path):
    # Given 1.0.0 served at 0.60 until three hours ago, then 1.1.0 at 0.52, collapsing for 15 minutes
    ctx = _ctx(pg_url, tmp_path)
    _promoted_with_previous(ctx)
    now = ctx.now()
    _live(ctx, "1.0.0", now - timedelta(hours=5), 120, 0.60)
    _live(ctx, "1.1.0", now - timedelta(minutes=180), 165, 0.52, seed=1)
    _live(ctx, "1.1.0", now - timedelta(minutes=15), 15, 0.10, seed=2)
    # When the sweep runs
    result = sweep(ctx)
    # Then production is 1.0.0 again within this sweep, 1.1.0 the rollback target, audited with the figures
    a = aliases(ctx)
    assert (a["production"][0], a["previous"][0]) == ("1.0.0", "1.1.0")
    [rb] = result.rollbacks
    assert (rb["from"], rb["to"], rb["by"]) == ("1.1.0", "1.0.0", "emergency")
    [(actor, msg, data)] = _events(ctx, "rollback")
    f = data["figures"]
    assert actor == "emergency" and "previous scored better" in msg and "a retraining follows" in msg
    assert f["reference"] == "recent" and f["reference_n"] == f["recent_n"] == 3600 and f["previous"] > f["production"]
    assert f["reference_span"] == "window" and f["reference_until"] == now.isoformat()
    assert f["p_worse"] <= 0.05 and data["emergency"]["severity"] == "CRITICAL"
    # And the retraining still runs: the request names the version now serving, so it is not superseded
    [req] = _emergency_requests(ctx)
    assert req.evidence["version"] == "1.0.0" and req.evidence["fired_on"] == "1.1.0"
    assert decide_request(ctx, req.id, ROOM).verdict == "approve"
    # And the next sweep does not roll back again within the episode
    ctx.clock.advance(timedelta(minutes=1))
    assert sweep(ctx).rollbacks == [] and aliases(ctx)["production"][0] == "1.0.0"


def test_a_previous_without_live_outcomes_is_judged_by_its_validated_level(pg_url, tmp_path):
    # Given 1.1.0 serving since long ago and collapsing; 1.0.0 has no outcomes in the window
    ctx = _ctx(pg_url, tmp_path)
    _promoted_with_previous(ctx)
    _collapse(ctx, "1.1.0")
    _live(ctx, "1.1.0", ctx.now() - timedelta(minutes=240), 225, 0.50, seed=7)  # and weaker before it
    # When the sweep runs
    result = sweep(ctx)
    # Then 1.0.0's validated 0.60 beats 1.1.0's live level: production goes back to it
    assert aliases(ctx)["production"][0] == "1.0.0"
    assert result.rollbacks[0]["figures"]["reference"] == "holdout"
    assert result.rollbacks[0]["figures"]["previous"] == 0.60


def test_no_rollback_when_previous_did_not_score_better(pg_url, tmp_path):
    # Given a rollback target validated at only 0.40, and production collapsing from 0.60
    ctx = _ctx(pg_url, tmp_path)
    _promoted_with_previous(ctx)
    _baseline(ctx, "1.0.0", 0.40)
    _collapse(ctx, "1.1.0")
    # When the sweep runs
    result = sweep(ctx)
    # Then production stays; the request says why, and the retraining goes ahead
    assert result.rollbacks == [] and aliases(ctx)["production"][0] == "1.1.0"
    assert _events(ctx, "rollback") == []
    [req] = _emergency_requests(ctx)
    prev = req.evidence["previous"]
    assert prev["action"] == "stay" and prev["figures"]["reference"] == "holdout" and req.evidence["version"] == "1.1.0"
    assert decide_request(ctx, req.id, ROOM).verdict == "approve"


def test_an_emergency_never_goes_back_to_a_version_that_was_rolled_back_from(pg_url, tmp_path):
    # Given production 1.1.0 restored by a rollback from 1.0.0 (e.g. by the post-promotion watch)
    ctx = _ctx(pg_url, tmp_path)
    _promoted_with_previous(ctx)
    with ctx.store.tx() as tx:
        tx.versions.update(tx.versions.get(MODEL, "1.0.0"), status="rolled_back")
    _collapse(ctx, "1.1.0")
    # When production collapses
    result = sweep(ctx)
    # Then it is not flipped back to the version it was restored from; the retraining is asked
    assert result.rollbacks == [] and aliases(ctx)["production"][0] == "1.1.0"
    [req] = _emergency_requests(ctx)
    assert req.evidence["previous"]["action"] == "stay" and "itself rolled back" in req.evidence["previous"]["reason"]


def _replaced(ctx, span: str, level: float, *, holdout: float) -> datetime:
    """1.0.0 (validated at ``holdout``) served at ``level`` live until 1.1.0's promotion eleven hours ago: over
    the four hours before it (``window``), or during the rollout that ended in it, 8 to 5 h before it
    (``rollout``: none in the four hours before). Returns the promotion's time."""
    at = ctx.now() - timedelta(hours=11)
    _promoted_at(ctx, at)
    _baseline(ctx, "1.0.0", holdout)
    if span == "window":
        _live(ctx, "1.0.0", at - timedelta(hours=4), 240, level, seed=3)
    else:
        _rollout_ended(ctx, at - timedelta(hours=8), at)
        _live(ctx, "1.0.0", at - timedelta(hours=8), 180, level, seed=3)
        _live(ctx, "1.0.0", at - timedelta(hours=10), 60, 0.70, seed=4)  # before the rollout: not counted
    return at


def _collapses_to(ctx, at, level: float) -> None:
    """1.1.0 served since ``at``, then collapsed to 0.10 for the last 15 minutes: ``level`` over the window."""
    before = (level * 240 - 0.10 * 15) / 225
    now = ctx.now()
    _live(ctx, "1.1.0", at, int((now - at).total_seconds() // 60) - 15, before, seed=5)
    _live(ctx, "1.1.0", now - timedelta(minutes=15), 15, 0.10, seed=6)


@pytest.mark.parametrize("span", ["window", "rollout"])
def test_on_an_emergency_a_previous_that_served_no_better_before_it_was_replaced_is_not_served_again(
        pg_url, tmp_path, span):
    # Given 1.0.0 validated at 0.63 but serving at 0.49 live until it was replaced, and nothing since
    ctx = _ctx(pg_url, tmp_path)
    at = _replaced(ctx, span, 0.49, holdout=0.63)
    # And 1.1.0 collapsing to 0.52 over the window (against the holdout 0.63 alone: a rollback)
    _collapses_to(ctx, at, 0.52)
    # When the sweep runs
    result = sweep(ctx)
    # Then production stays 1.1.0: 1.0.0 did no better live; the request says so, and the retraining goes ahead
    assert result.rollbacks == [] and aliases(ctx)["production"][0] == "1.1.0"
    assert _events(ctx, "rollback") == []
    [req] = _emergency_requests(ctx)
    prev = req.evidence["previous"]
    f = prev["figures"]
    assert prev["action"] == "stay" and "not better" in prev["reason"]
    assert f["reference"] == "service" and f["reference_span"] == span and f["recent_n"] == 0
    assert f["reference_n"] == (10800 if span == "rollout" else 14400) and f["replaced_by"] == "1.1.0"
    assert 0.47 <= f["previous"] <= 0.51 and 0.50 <= f["production"] <= 0.54
    assert f["reference_until"] == at.isoformat()
    assert req.evidence["version"] == "1.1.0" and decide_request(ctx, req.id, ROOM).verdict == "approve"


@pytest.mark.parametrize("span", ["window", "rollout"])
def test_on_an_emergency_a_previous_that_served_better_before_it_was_replaced_is_served_again(pg_url, tmp_path, span):
    # Given 1.0.0 (validated at 0.55) serving at 0.62 live until it was replaced, and 1.1.0 collapsing to 0.40
    ctx = _ctx(pg_url, tmp_path)
    at = _replaced(ctx, span, 0.62, holdout=0.55)
    _collapses_to(ctx, at, 0.40)
    # When the sweep runs
    result = sweep(ctx)
    # Then production is 1.0.0 again, by the emergency; the audit names its live level then as the reference
    assert aliases(ctx)["production"][0] == "1.0.0"
    [(actor, msg, data)] = _events(ctx, "rollback")
    f = data["figures"]
    assert actor == "emergency" and "previous scored better" in msg
    assert "during the rollout of 1.1.0" in msg if span == "rollout" else "before it was replaced by 1.1.0" in msg
    assert f["reference"] == "service" and f["reference_span"] == span and f["recent_n"] == 0
    assert f["reference_n"] == (10800 if span == "rollout" else 14400)
    assert 0.60 <= f["previous"] <= 0.64 and f["production"] <= 0.42 and f["p_worse"] <= 0.05
    assert result.rollbacks[0]["figures"]["reference"] == "service"


# ----------------------------------------------------------------------------- one retraining per episode
def test_a_persisting_emergency_retrains_once_per_episode(pg_url, tmp_path):
    # Given an emergency whose retraining was approved and has finished (its candidate rejected)
    ctx = _ctx(pg_url, tmp_path)
    add_version(ctx, "1.0.0", "A")
    make_production(ctx, "1.0.0")
    _collapse(ctx, "1.0.0")
    [rid] = sweep(ctx).requests_opened
    run_id = decide_request(ctx, rid, ROOM).run_id
    assert run_id
    held = sweep(ctx)  # while it runs: held back as before
    assert not held.requests_opened and "already joined run" in held.held_back[0]["why"]
    with ctx.store.tx() as tx:
        end_run(tx, run_id, "rejected", ctx.now())
    # When the collapse persists for the next half hour, swept every five minutes
    for i in range(6):
        ctx.clock.advance(timedelta(minutes=5))
        _live(ctx, "1.0.0", ctx.now() - timedelta(minutes=5), 5, 0.10, seed=10 + i)
        result = sweep(ctx)
        # Then no new emergency request: the episode had its retraining (the performance trigger, which
        # may fire too, goes through every rule as usual: cooldown, daily limit, approval)
        [why] = [h["why"] for h in result.held_back if h["trigger"] == "emergency"]
        assert "had its retraining" in why, i
    assert len(_emergency_requests(ctx)) == 1
    # And once the episode is over (no firing for longer than episode_gap_minutes), a new emergency asks again
    ctx.clock.advance(timedelta(minutes=70))
    _live(ctx, "1.0.0", ctx.now() - timedelta(minutes=70), 55, 0.60, seed=30)
    assert [f for f in sweep(ctx).firings if f["trigger"] == "emergency"] == []
    ctx.clock.advance(timedelta(minutes=15))
    _live(ctx, "1.0.0", ctx.now() - timedelta(minutes=15), 15, 0.05, seed=31)
    sweep(ctx)
    assert len(_emergency_requests(ctx)) == 2


# ----------------------------------------------------------------------------- post-promotion watch
def _promoted_at(ctx, at) -> None:
    """1.0.0 (validated at 0.60) was production until ``at``, when 1.1.0 was promoted."""
    add_version(ctx, "1.0.0", "A")
    add_version(ctx, "1.1.0", "B")
    _baseline(ctx, "1.0.0", 0.60)
    _baseline(ctx, "1.1.0", 0.63)
    make_production(ctx, "1.0.0", now=at - timedelta(days=7))
    with ctx.store.tx() as tx:
        tx.aliases.move(MODEL, "production", "1.1.0", actor="promotion", reason="run passed its rollout", now=at)
        tx.aliases.move(MODEL, "previous", "1.0.0", actor="promotion", reason="replaced by 1.1.0", now=at)


def test_a_promoted_version_significantly_worse_than_its_predecessor_is_rolled_back(pg_url, tmp_path):
    # Given 1.1.0 promoted five hours ago, serving at 0.50 since (1.0.0 was validated at 0.60, and has
    # no live outcomes before the promotion: its holdout level is the reference)
    ctx = _ctx(pg_url, tmp_path, emergency=False)
    _promoted_at(ctx, ctx.now() - timedelta(hours=5))
    _live(ctx, "1.1.0", ctx.now() - timedelta(hours=5), 300, 0.50)
    # When the sweep runs
    result = sweep(ctx)
    # Then production is 1.0.0 again, audited with the figures
    a = aliases(ctx)
    assert (a["production"][0], a["previous"][0]) == ("1.0.0", "1.1.0")
    [(actor, msg, data)] = _events(ctx, "rollback")
    f = data["figures"]
    assert actor == "watch" and "post-promotion watch" in msg and "worse than the version it replaced" in msg
    assert f["predecessor"] == 0.60 and f["production_n"] == 18000 and f["relative"] <= -0.10
    assert f["reference"] == "holdout" and f["reference_n"] == 0  # 1.0.0 has no live outcomes before
    assert f["p_worse"] <= 0.05 and f["watch_hours"] == 72.0
    assert result.rollbacks[0]["by"] == "watch"
    # And the version served again is not watched in turn (it came back by a rollback, not a promotion)
    ctx.clock.advance(timedelta(minutes=5))
    _live(ctx, "1.0.0", ctx.now() - timedelta(minutes=5), 5, 0.30)
    assert sweep(ctx).rollbacks == []


def _rollout_ended(ctx, started, at) -> None:
    """The rollout of 1.1.0 against production 1.0.0, from ``started``, ended in its promotion at ``at``."""
    with ctx.store.tx() as tx:
        tx.rollouts.add(run_id=new_id(), model=MODEL, candidate_version="1.1.0", baseline_version="1.0.0",
                        phase="promoted", stages=[10.0, 25.0, 50.0, 100.0], stage=3, share_pct=0.0, started_at=started,
                        stage_started_at=at - timedelta(hours=1), canary_started_at=started + timedelta(hours=2),
                        updated_at=at, finished_at=at, gate=None, gate_by=None, scored_until=0, paired={},
                        figures={}, history=[], outcome="last stage passed")


@pytest.mark.parametrize("span", ["window", "rollout"])
def test_a_promoted_version_serving_as_its_predecessor_did_live_is_not_rolled_back(pg_url, tmp_path, span):
    # Given 1.0.0 validated at 0.63 but serving at 0.54 before 1.1.0's promotion five hours ago: over the
    # four hours before it; or during the rollout that ended in it, 8 to 5 h before it (none in the
    # four hours before it: without the rollout's span, the holdout level would be the reference)
    ctx = _ctx(pg_url, tmp_path, emergency=False)
    at = ctx.now() - timedelta(hours=5)
    _promoted_at(ctx, at)
    _baseline(ctx, "1.0.0", 0.63)
    if span == "window":
        _live(ctx, "1.0.0", at - timedelta(hours=4), 240, 0.54, seed=3)
    else:
        _rollout_ended(ctx, at - timedelta(hours=8), at)
        _live(ctx, "1.0.0", at - timedelta(hours=8), 180, 0.54, seed=3)  # only 3 h: 10,800 outcomes
        _live(ctx, "1.0.0", at - timedelta(hours=10), 60, 0.70, seed=4)  # before the rollout: not counted
    # And 1.1.0 serving at 0.54 too since (against the holdout 0.63 alone: -14 %, a rollback)
    _live(ctx, "1.1.0", at, 300, 0.54, seed=5)
    # When the sweep runs
    result = sweep(ctx)
    # Then production stays 1.1.0: it is no worse than 1.0.0 was, live
    assert result.rollbacks == [] and aliases(ctx)["production"][0] == "1.1.0"
    assert _events(ctx, "rollback") == []


@pytest.mark.parametrize("span", ["window", "rollout"])
def test_a_promoted_version_significantly_below_its_predecessors_live_level_is_rolled_back(pg_url, tmp_path, span):
    # Given 1.0.0 (validated at 0.55) serving at 0.60 before 1.1.0's promotion five hours ago,
    # and 1.1.0 at 0.52 since: 13 % below the predecessor's live level, above its holdout level
    ctx = _ctx(pg_url, tmp_path, emergency=False)
    at = ctx.now() - timedelta(hours=5)
    _promoted_at(ctx, at)
    _baseline(ctx, "1.0.0", 0.55)
    if span == "rollout":
        _rollout_ended(ctx, at - timedelta(hours=8), at)
        _live(ctx, "1.0.0", at - timedelta(hours=8), 180, 0.60, seed=3)
    else:
        _live(ctx, "1.0.0", at - timedelta(hours=6), 360, 0.60, seed=3)  # 6 h, of which the last 4 count
    _live(ctx, "1.1.0", at, 300, 0.52, seed=5)
    # When the sweep runs
    result = sweep(ctx)
    # Then production is 1.0.0 again; the audit says the reference was 1.0.0's live level, on how many outcomes
    assert aliases(ctx)["production"][0] == "1.0.0"
    [(actor, msg, data)] = _events(ctx, "rollback")
    f = data["figures"]
    assert actor == "watch" and "worse than the version it replaced" in msg and "of the version it replaced on" in msg
    assert f["reference"] == "live" and f["reference_span"] == span
    assert f["reference_n"] == (10800 if span == "rollout" else 14400) and f["production_n"] == 18000
    assert 0.58 <= f["predecessor"] <= 0.62 and f["relative"] <= -0.10 and f["p_worse"] <= 0.05
    assert f["reference_until"] == at.isoformat() and result.rollbacks[0]["figures"]["reference"] == "live"


@pytest.mark.parametrize("case", ["small", "insignificant", "after the watch"])
def test_no_watch_rollback_on_a_small_or_insignificant_degradation_or_after_the_period(pg_url, tmp_path, case):
    # Given 1.1.0 promoted, serving: 5 % below its predecessor's level on many outcomes; or 17 % below
    # on a few (min_samples lowered so that they are judged); or far below, but promoted 73 h ago
    ctx = _ctx(pg_url, tmp_path, emergency=False,
               thresholds={"min_samples": 40 if case == "insignificant" else 1000})
    hours = 73 if case == "after the watch" else 5
    _promoted_at(ctx, ctx.now() - timedelta(hours=hours))
    if case == "small":
        _live(ctx, "1.1.0", ctx.now() - timedelta(hours=5), 300, 0.57)
    elif case == "insignificant":
        _live(ctx, "1.1.0", ctx.now() - timedelta(minutes=50), 1, 0.50, per_minute=50)
    else:
        _live(ctx, "1.1.0", ctx.now() - timedelta(hours=5), 300, 0.45)
    # When the sweep runs
    result = sweep(ctx)
    # Then production stays 1.1.0
    assert result.rollbacks == [] and aliases(ctx)["production"][0] == "1.1.0"
    assert _events(ctx, "rollback") == []
