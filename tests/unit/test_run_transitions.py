"""A run changes state only through retrain.core.lifecycle: each move checked against TRANSITIONS
and, for a training attempt, against its fencing token."""

from __future__ import annotations

import ast
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from retrain.core import lifecycle
from retrain.core.domain import RunState
from retrain.core.errors import StaleLeaseError
from retrain.core.lifecycle import TRANSITIONS, TransitionError
from retrain.core.records import RunRecord

ROOT = Path(__file__).resolve().parents[2]
LIFECYCLE = Path("retrain/core/lifecycle.py")
# Names that hold a rollout: its ``stage`` is the canary stage index, not the run's stage.
ROLLOUT_ROWS = {"ro"}
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


# ---------------------------------------------------------------------------- the source
def _targets(node: ast.AST):
    if isinstance(node, (ast.Tuple, ast.List)):
        for elt in node.elts:
            yield from _targets(elt)
    elif isinstance(node, ast.Starred):
        yield from _targets(node.value)
    else:
        yield node


def _call_name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _offences(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        for t in (x for tgt in targets for x in _targets(tgt)):
            if isinstance(t, ast.Attribute) and t.attr == "state":
                found.append((node.lineno, "assigns .state"))
            if isinstance(t, ast.Attribute) and t.attr == "stage" and not (
                    isinstance(t.value, ast.Name) and t.value.id in ROLLOUT_ROWS):
                found.append((node.lineno, "assigns .stage"))
        if isinstance(node, ast.Call):
            name = _call_name(node)
            keywords = {k.arg for k in node.keywords}
            if name == "setattr" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                    and node.args[1].value in ("state", "stage"):
                found.append((node.lineno, f"setattr(..., {node.args[1].value!r})"))
            if name == "values" and keywords & {"state", "stage"}:
                found.append((node.lineno, "an UPDATE/INSERT ... values(state=...)"))
            if name in ("write", "insert") and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "runs":
                found.append((node.lineno, f"runs.{name}(), the lifecycle's own write"))
            if name in ("RunRow", "RunRecord") and keywords & {"state", "stage"}:
                found.append((node.lineno, f"builds a {name} with its state"))
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if {"state", "decision_id"} <= keys:  # a training_runs row, not a report of one
                found.append((node.lineno, "a run row as a dict with its state (bulk insert)"))
    return found


def _sources():
    for top in ("retrain", "workers"):
        for p in sorted((ROOT / top).rglob("*.py")):
            rel = p.relative_to(ROOT)
            if "migrations" not in rel.parts and rel != LIFECYCLE:
                yield rel, p.read_text()


def test_no_run_state_is_written_outside_the_lifecycle():
    # Given every module of retrain/ and workers/ but retrain/core/lifecycle.py
    # When their assignments, row constructions and updates are read
    offenders = [f"{rel}:{line}: {what}" for rel, src in _sources() for line, what in _offences(ast.parse(src))]
    # Then none writes a run's state or stage: they call retrain.core.lifecycle
    assert offenders == []


@pytest.mark.parametrize("src", [
    "run.state = 'done'",
    "run.state, run.finished_at = 'done', now",
    "run.stage = 'canary 10%'",
    "(a, [run.stage, b]) = x",
    "setattr(run, 'state', 'done')",
    "tx.s.add(RunRow(id=rid, state='queued'))",
    "tx.s.execute(update(RunRow).values(state='failed'))",
    "rows.append({'id': rid, 'decision_id': d, 'state': 'done'})",
    "tx.runs.write(run, {'state': 'done'})",
    "tx.runs.insert(run)",
    "RunRecord(id=rid, state='queued')",
])
def test_the_source_check_sees_every_way_of_writing_a_state(src):
    assert _offences(ast.parse(src))


@pytest.mark.parametrize("src", [
    "ro.stage, ro.share_pct = nxt.stage, nxt.share_pct",  # a rollout row's stage index
    "ok = run.state == 'training'",
    "task.update_state(task_id=tid, state='PROGRESS')",
    "lifecycle.enter_canary(run, 10.0)",
])
def test_the_source_check_leaves_the_rest_alone(src):
    assert _offences(ast.parse(src)) == []


# ---------------------------------------------------------------------------- the moves
class _Runs:
    """The one method of the runs repository the lifecycle writes through, in memory: a write
    lands only if the run is still as the writer read it (state and attempt), as in the store."""

    def __init__(self) -> None:
        self.rows: dict[str, RunRecord] = {}

    def write(self, run: RunRecord, changes: dict) -> RunRecord:
        now = self.rows.get(run.id, run)
        if (now.state, now.attempt) != (run.state, run.attempt):
            raise StaleLeaseError(f"run {run.id} changed under this step")
        self.rows[run.id] = replace(now, **changes)
        return self.rows[run.id]


class _Tx:
    def __init__(self) -> None:
        self.runs = _Runs()


TX: Any = _Tx()


@pytest.fixture(autouse=True)
def _fresh_store():
    TX.runs.rows.clear()  # every test's runs are new


def _run(state: str = "queued", **kw) -> RunRecord:
    fields = dict(id="run-1", model="direction", request_id="r", decision_id="d", trigger="manual", priority=4,
                  state=state, attempt=0, created_at=NOW, usage={}, stage="", progress=0.0, lease_owner=None,
                  lease_expires_at=None, started_at=None, finished_at=None, error=None, blocked_on=None,
                  candidate_version=None, heartbeat_at=None, dispatched_at=None)
    return RunRecord(**{**fields, **kw})  # type: ignore[arg-type]


def _training(attempt: int = 1, owner: str = "w1", until: datetime = NOW + timedelta(minutes=5)) -> RunRecord:
    return _run("training", attempt=attempt, lease_owner=owner, lease_expires_at=until, started_at=NOW)


def test_a_run_walks_the_whole_staged_path():
    # Given a queued run
    run = _run()
    # When it is trained, validated, shadowed, canaried and promoted
    run = lifecycle.start_training(TX, run, owner="w1", now=NOW, lease_until=NOW + timedelta(minutes=5))
    attempt = run.attempt
    assert (run.state, run.attempt, run.lease_owner, run.stage) == ("training", 1, "w1", "loading data")
    run = lifecycle.progress(TX, run, "fitting", 0.3, attempt=attempt)
    run = lifecycle.to_validating(TX, run, "1.1.0", attempt=attempt, owner="w1")
    assert (run.state, run.candidate_version, run.lease_owner, run.progress) == ("validating", "1.1.0", None, 1.0)
    run = lifecycle.enter_shadow(TX, run)
    run = lifecycle.enter_canary(TX, run, 10)
    assert (run.state, run.stage) == ("rollout", "canary 10%")
    run = lifecycle.advance_canary(TX, run, 25)
    assert run.stage == "canary 25%"
    run = lifecycle.complete(TX, run, NOW)
    # Then it is done, at each step in a state TRANSITIONS allows
    assert (run.state, run.stage, run.finished_at) == ("done", "done", NOW)


def test_the_immediate_path_and_a_rejection():
    run = _run("validating")
    run = lifecycle.to_promotion(TX, run)
    assert (run.state, run.stage) == ("rollout", "promoting")
    run = lifecycle.complete(TX, run, NOW)
    other = _run("shadow", id="run-2")
    other = lifecycle.reject(TX, other, "worse in shadow", NOW, stage="shadow_rejected")
    assert (other.state, other.stage, other.error, other.finished_at) == ("rejected", "shadow_rejected",
                                                                         "worse in shadow", NOW)


@pytest.mark.parametrize("state, move", [
    ("queued", lambda r: lifecycle.to_promotion(TX, r)),
    ("queued", lambda r: lifecycle.enter_shadow(TX, r)),
    ("done", lambda r: lifecycle.start_training(TX, r, owner="w1", now=NOW, lease_until=NOW)),
    ("rejected", lambda r: lifecycle.reject(TX, r, "again", NOW)),
    ("validating", lambda r: lifecycle.complete(TX, r, NOW)),
    ("shadow", lambda r: lifecycle.advance_canary(TX, r, 50)),
    ("failed", lambda r: lifecycle.hold(TX, r, "a slot")),
    ("rollout", lambda r: lifecycle.enter_shadow(TX, r)),
])
def test_a_move_the_table_does_not_allow_is_refused_by_name(state, move):
    # Given a run in a state the move does not start from
    run = _run(state)
    # When it is asked to move, Then the error names the run, its state and the move, and nothing changes
    with pytest.raises(TransitionError, match=rf"run run-1 of direction is {state}: \w+"):
        move(run)
    assert run.state == state


def test_every_move_a_function_makes_is_in_the_table():
    made = {("queued", "training"), ("training", "training"), ("training", "queued"), ("training", "validating"),
            ("validating", "shadow"), ("validating", "rollout"), ("shadow", "rollout"), ("shadow", "done"),
            ("rollout", "done"), ("validating", "rejected"), ("shadow", "rejected"), ("rollout", "rejected")}
    assert all(lifecycle.can_move(a, b) for a, b in made)
    assert not lifecycle.can_move("validating", "done")  # promoted only through the rollout state ('promoting')


def test_an_expired_attempt_is_taken_over_by_a_new_one_but_a_live_lease_is_not():
    run = _training(attempt=1, owner="w1", until=NOW - timedelta(seconds=1))
    run = lifecycle.start_training(TX, run, owner="w2", now=NOW, lease_until=NOW + timedelta(minutes=5))
    assert run.attempt == 2
    assert run.lease_owner == "w2"
    live = _training(attempt=1, owner="w1")
    with pytest.raises(StaleLeaseError, match="held by w1"):
        lifecycle.start_training(TX, live, owner="w2", now=NOW, lease_until=NOW + timedelta(minutes=5))
    assert (live.attempt, live.lease_owner) == (1, "w1")


def test_a_stale_attempt_is_fenced_off():
    # Given attempt 1 lost the run to attempt 2 of another worker
    run = _training(attempt=2, owner="w2")
    # When attempt 1 tries to report, register or queue the run again, Then it is refused
    with pytest.raises(StaleLeaseError, match="attempt 1 lost its lease .*nothing registered"):
        run = lifecycle.to_validating(TX, run, "1.1.0", attempt=1, owner="w1")
    with pytest.raises(StaleLeaseError):
        run = lifecycle.to_validating(TX, run, "1.1.0", attempt=2, owner="w1")  # right attempt, wrong holder
    with pytest.raises(StaleLeaseError):
        run = lifecycle.requeue(TX, run, attempt=1, reason="boom", now=NOW)
    with pytest.raises(StaleLeaseError):
        run = lifecycle.progress(TX, run, "fitting", 0.3, attempt=1)
    # And finish, fenced, changes nothing (the unit of work is never reached)
    assert lifecycle.finish(None, run, "failed", "timeout", NOW, attempt=1) is False  # type: ignore[arg-type]
    assert lifecycle.finish(None, run, "failed", "timeout", NOW, owner="w1") is False  # type: ignore[arg-type]
    assert (run.state, run.attempt, run.lease_owner, run.stage) == ("training", 2, "w2", "")


def test_requeue_and_hold_put_a_training_run_back_in_line_without_its_lease():
    run = _training(attempt=1)
    run = lifecycle.requeue(TX, run, attempt=1, reason="attempt 1 failed: boom", now=NOW)
    assert (run.state, run.stage, run.error, run.lease_owner, run.dispatched_at) == (
        "queued", "retrying", "attempt 1 failed: boom", None, NOW)
    held = replace(_training(attempt=1, until=NOW - timedelta(seconds=1)), id="run-2")
    held = lifecycle.hold(TX, held, "a training slot")
    assert (held.state, held.stage, held.blocked_on, held.lease_owner) == ("queued", "waiting", "a training slot", None)
    held = lifecycle.hold(TX, held, "direction run 1234 to finish")  # a queued run waits on, for something else
    assert (held.state, held.blocked_on) == ("queued", "direction run 1234 to finish")


def test_finish_never_ends_a_run_done_nor_twice():
    assert lifecycle.finish(None, _run("rollout"), "done", "no", NOW) is False  # type: ignore[arg-type]
    assert lifecycle.finish(None, _run("failed"), "dead", "again", NOW) is False  # type: ignore[arg-type]


def test_the_table_uses_every_run_state():
    assert set(TRANSITIONS) == set(RunState)
