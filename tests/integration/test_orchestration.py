"""Orchestration against real databases (SQLite and Postgres): the run lifecycle, leases
and fencing, global training slots, dependencies between models, the reconciler.

Steps are called in-process on a simulated clock; the fault tests (tests/faults/) do
the same things through real workers, brokers and killed processes.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from retrain import slots
from retrain.config import parse_config
from retrain.core.errors import StaleLeaseError
from retrain.report import render_status, status_data
from retrain.steps import train as train_step
from retrain.steps.reconcile import reconcile
from retrain.steps.train import _claim, _set_progress, fail_run, train_run
from tests.conftest import make_context
from tests.runs import end_run, make_run

BASE = {"entry_point": "tests.faults.slow_model:train", "data_source": "tests.faults.slow_model:history",
        "features": ["f0", "f1"]}


def _config(**models):
    return parse_config({"models": {name: {**BASE, **body} for name, body in models.items()}})


def _ctx(db_url, tmp_path, config=None, **settings):
    return make_context(db_url, tmp_path, config=config or _config(a={}, b={"depends_on": ["a"]}, c={}),
                        **{"lease_s": 30, "training_slots": 2, "requeue_after_s": 60, **settings})


def _run(ctx, model="a", priority=1, trigger="schedule") -> str:
    with ctx.store.tx() as tx:
        rid = make_run(tx, model, ctx.now(), request_id=f"req-{model}", decision_id="dec", trigger=trigger,
                       priority=priority).id
    ctx.clock.advance(timedelta(seconds=1))  # runs are ordered by creation time
    return rid


def _get(ctx, run_id):
    with ctx.store.tx() as tx:
        return tx.runs.get(run_id)


def _pending(ctx, task="retrain.train") -> list[str]:
    with ctx.store.tx() as tx:
        return [m.payload.get("run_id") or m.payload.get("request_id") for m in tx.outbox.pending(limit=1000)
                if m.task == task]


def _held(ctx) -> list[str]:
    with ctx.store.tx() as tx:
        return [h.run_id for h in slots.holders(tx, ctx.now())]


def test_a_run_trains_once_registers_one_version_and_frees_its_slot(any_db_url, tmp_path):
    # Given a queued run
    ctx = _ctx(any_db_url, tmp_path)
    rid = _run(ctx)
    stages = []
    # When it is trained
    result = train_run(ctx, rid, lambda stage, pct: stages.append((stage, pct)))
    # Then one version is registered by attempt 1, the run moves to validation and its slot is back
    assert result.status == "registered"
    run = _get(ctx, rid)
    assert (run.state, run.attempt, run.lease_owner, run.candidate_version) == ("validating", 1, None, "1.0.0")
    assert _held(ctx) == []
    assert [s for s, _ in stages] == ["loading data", "fitting", "saving artifact"]
    # And a duplicate message for the same run changes nothing
    assert train_run(ctx, rid).status == "skipped"
    with ctx.store.tx() as tx:
        assert [v.version for v in tx.versions.all("a")] == ["1.0.0"]


def test_the_global_limit_holds_and_a_freed_slot_wakes_the_best_waiting_run(any_db_url, tmp_path):
    # Given one training slot, held by a run of model c
    ctx = _ctx(any_db_url, tmp_path, training_slots=1)
    holder = _run(ctx, "c")
    assert _claim(ctx, holder, ctx.now())[0] == "claimed"
    low, high = _run(ctx, "a", priority=1), _run(ctx, "b", priority=9, trigger="emergency")
    # When two more runs try to start
    assert _claim(ctx, low, ctx.now())[0] == "busy"
    # Then they wait in Postgres, saying for what, and their messages are done with
    run = _get(ctx, low)
    assert run.state == "queued" and run.blocked_on.startswith("a free training slot") and run.attempt == 0
    assert _held(ctx) == [holder]
    # (b depends on a, whose run is older and still active: b waits for that first)
    assert _claim(ctx, high, ctx.now())[0] == "blocked"
    assert "a run" in _get(ctx, high).blocked_on
    # When the holder fails (its slot comes back)
    assert fail_run(ctx, holder, "timed out")
    # Then the waiting run of a is sent again (b still waits for a's run)
    assert _pending(ctx) == [low]
    assert _held(ctx) == []


def test_a_dependent_run_starts_when_its_dependency_is_done(any_db_url, tmp_path):
    # Given model b depends on a, and a's run was queued before b's
    ctx = _ctx(any_db_url, tmp_path)
    run_a, run_b = _run(ctx, "a"), _run(ctx, "b")
    # When b's run is sent first, Then it waits and says for what
    assert train_run(ctx, run_b).status == "blocked"
    assert _get(ctx, run_b).blocked_on == f"a run {run_a[:8]} (queued) to finish"
    # When a's run trains and is promoted
    assert train_run(ctx, run_a).status == "registered"
    with ctx.store.tx() as tx:
        end_run(tx, run_a, "done", ctx.now())
    # Then the reconciler wakes b's run, which trains
    assert run_b in reconcile(ctx).woken
    assert train_run(ctx, run_b).status == "registered"


def test_mutual_dependencies_cannot_deadlock(any_db_url, tmp_path):
    # Given x and y depend on each other (a model file mistake), each with a queued run
    ctx = _ctx(any_db_url, tmp_path, config=_config(x={"depends_on": ["y"]}, y={"depends_on": ["x"]}))
    run_x, run_y = _run(ctx, "x"), _run(ctx, "y")
    # When both are sent, Then only the later one waits: runs wait only for earlier runs
    assert train_run(ctx, run_y).status == "blocked"
    assert train_run(ctx, run_x).status == "registered"


def test_an_expired_lease_is_retried_then_dead_with_the_reason(any_db_url, tmp_path):
    # Given a run whose worker took the lease and vanished, with two attempts allowed
    ctx = _ctx(any_db_url, tmp_path, max_attempts=2)
    rid = _run(ctx)
    assert _claim(ctx, rid, ctx.now())[:2] == ("claimed", 1)
    # When the lease expires and the reconciler runs
    ctx.clock.advance(timedelta(seconds=31))
    out = reconcile(ctx)
    # Then the run is queued again with the reason, its slot given back, its message in the outbox
    assert out.requeued == [rid]
    run = _get(ctx, rid)
    assert (run.state, run.attempt, run.lease_owner) == ("queued", 1, None)
    assert "lease of attempt 1 expired" in run.error
    assert _held(ctx) == [] and _pending(ctx) == [rid]
    # When the second attempt's worker vanishes too
    assert _claim(ctx, rid, ctx.now())[:2] == ("claimed", 2)
    ctx.clock.advance(timedelta(seconds=31))
    assert reconcile(ctx).dead == [rid]
    # Then the run is dead, and status and audit say why
    run = _get(ctx, rid)
    assert run.state == "dead" and "2 of 2 attempts used" in run.error
    text = render_status(status_data(ctx))
    assert "dead: the lease of attempt 2 expired" in text
    with ctx.store.tx() as tx:
        assert any("dead" in e.message and "attempts used" in e.message for e in tx.audit.events("a"))
    # And a message that arrives late changes nothing
    assert train_run(ctx, rid).status == "skipped"


def test_a_stale_attempt_is_fenced_off(any_db_url, tmp_path):
    # Given attempt 1 lost its lease and attempt 2 took the run
    ctx = _ctx(any_db_url, tmp_path)
    rid = _run(ctx)
    _claim(ctx, rid, ctx.now())
    ctx.clock.advance(timedelta(seconds=31))
    reconcile(ctx)
    other = make_context(ctx.store.db.url, tmp_path, config=ctx.config, clock=ctx.clock, lease_s=30)
    other.worker_id = "other-worker"
    assert _claim(other, rid, other.now())[:2] == ("claimed", 2)
    # When attempt 1 tries to record progress (or fail the run on a timeout)
    with pytest.raises(StaleLeaseError):
        _set_progress(ctx, rid, 1, "fitting", 0.3, None)
    assert not fail_run(ctx, rid, "timed out")
    # Then attempt 2 keeps the run and the slot
    run = _get(ctx, rid)
    assert (run.state, run.attempt, run.lease_owner) == ("training", 2, "other-worker")
    assert _held(ctx) == [rid]


def test_a_failing_fit_is_retried_until_its_attempts_are_used(any_db_url, tmp_path):
    # Given a model whose own code raises, and three attempts
    ctx = _ctx(any_db_url, tmp_path, config=_config(a={"entry_point": "tests.faults.slow_model:broken"}),
               max_attempts=3)
    rid = _run(ctx)
    # When it is trained until it stops
    statuses = [train_run(ctx, rid).status for _ in range(3)]
    # Then two retries, then dead with the model's error, and no slot held
    assert statuses == ["retrying", "retrying", "dead"]
    run = _get(ctx, rid)
    assert run.state == "dead" and "attempt 3 of 3 failed: ValueError" in run.error
    assert _held(ctx) == []


def test_the_reconciler_resends_what_a_lost_broker_forgot(any_db_url, tmp_path):
    # Given a queued run, a validating run and an open request whose messages were lost
    ctx = _ctx(any_db_url, tmp_path)
    queued, validating = _run(ctx, "a"), _run(ctx, "c")
    assert train_run(ctx, validating).status == "registered"
    from retrain.core.domain import RetrainRequest, TriggerKind

    with ctx.store.tx() as tx:
        tx.outbox.mark_published([m.id for m in tx.outbox.pending(limit=1000)], ctx.now())  # "published", then lost
        req_id, _ = tx.requests.open(RetrainRequest(id="00000000-0000-0000-0000-000000000001", model="a",
                                                    trigger=TriggerKind.MANUAL, created_at=ctx.now(), reason="r"))
    # When less than RETRAIN_REQUEUE_AFTER_S has passed, Then nothing is sent (the messages may be on their way)
    ctx.clock.advance(timedelta(seconds=30))
    assert reconcile(ctx).resent == []
    # When it has passed, Then each is sent again once, and the audit trail says so
    ctx.clock.advance(timedelta(seconds=31))
    out = reconcile(ctx)
    assert sorted(out.resent) == sorted([queued, validating]) and out.requests == [req_id]
    assert _pending(ctx, "retrain.train") == [queued] and _pending(ctx, "retrain.validate") == [validating]
    assert _pending(ctx, "retrain.decide") == [req_id]
    assert reconcile(ctx).resent == []  # not again within the next RETRAIN_REQUEUE_AFTER_S


def test_status_shows_stage_progress_and_what_a_run_waits_for(any_db_url, tmp_path):
    ctx = _ctx(any_db_url, tmp_path, training_slots=1)
    holder, waiting = _run(ctx, "c"), _run(ctx, "a")
    _claim(ctx, holder, ctx.now())
    _set_progress(ctx, holder, 1, "fitting", 0.42, None)
    _claim(ctx, waiting, ctx.now())
    data = status_data(ctx)
    runs = {r["id"]: r for r in data["runs"]}
    assert (runs[holder]["stage"], runs[holder]["progress"]) == ("fitting", 0.42)
    assert runs[waiting]["note"].startswith("waits for a free training slot")
    assert data["training_slots"]["held"][0]["run_id"] == holder
    text = render_status(data)
    assert "42%" in text and "Training slots: 1 of 1 in use" in text


def test_concurrent_claims_never_exceed_the_limit_on_postgres(pg_url, tmp_path):
    # Given 8 queued runs of different models and 2 slots
    config = _config(**{f"m{i}": {} for i in range(8)})
    runs = [_run(_ctx(pg_url, tmp_path, config=config), f"m{i}") for i in range(8)]
    results: list[str] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        ctx = _ctx(pg_url, tmp_path / str(i), config=config)
        ctx.worker_id = f"w{i}"
        barrier.wait(5)
        results.append(_claim(ctx, runs[i], ctx.now())[0])

    # When 8 workers claim at the same instant
    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    # Then exactly 2 hold a slot (SKIP LOCKED: nobody waited, nobody shared a row)
    assert sorted(results) == ["busy"] * 6 + ["claimed"] * 2
    assert len(_held(_ctx(pg_url, tmp_path, config=config))) == 2


def test_own_lease_is_taken_over_after_a_retry_in_the_same_process(any_db_url, tmp_path):
    # Given this process claimed a run and its task was retried (the attempt is no longer running)
    ctx = _ctx(any_db_url, tmp_path)
    rid = _run(ctx)
    _claim(ctx, rid, ctx.now())
    # When the retried message arrives while the lease is still live, Then this process takes it over
    assert rid not in train_step._ACTIVE_RUNS
    assert train_run(ctx, rid).status == "registered"
    assert _get(ctx, rid).attempt == 2


def test_the_in_process_drain_also_runs_a_dependent_run_after_its_dependency(any_db_url, tmp_path):
    from retrain.steps.dispatch import drain

    # Given b depends on a, a's run is older, and b's message comes first (higher priority)
    ctx = _ctx(any_db_url, tmp_path)
    run_a, run_b = _run(ctx, "a", priority=1), _run(ctx, "b", priority=9, trigger="emergency")
    with ctx.store.tx() as tx:
        tx.outbox.enqueue("retrain.train", {"v": 1, "run_id": run_b}, ctx.now(), priority=9)
        tx.outbox.enqueue("retrain.train", {"v": 1, "run_id": run_a}, ctx.now(), priority=1)
    # When the outbox is drained in-process (demo, backtest), Then both runs end, a before b
    drain(ctx)
    a, b = _get(ctx, run_a), _get(ctx, run_b)
    assert a.state in ("done", "rejected") and b.state in ("done", "rejected")
    with ctx.store.tx() as tx:
        events = [e.message for e in tx.audit.events(limit=1000)]
    order = [m.split(" (")[0] for m in events if m.startswith(("training of", "run of b waits"))]
    assert order == ["run of b waits for a run " + run_a[:8], "training of a started", "training of b started"]
