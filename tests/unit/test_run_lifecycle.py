"""The run lifecycle: which moves a run may make."""

from __future__ import annotations

from retrain.core.domain import RunState
from retrain.core.lifecycle import FINAL, TRANSITIONS, can_move


def test_final_states_are_the_domain_final_states_and_lead_nowhere():
    assert FINAL == {s for s in RunState if s.is_final}
    assert all(not TRANSITIONS[s] for s in FINAL)


def test_the_happy_path_is_allowed():
    path = ["queued", "training", "validating", "shadow", "rollout", "done"]
    assert all(can_move(a, b) for a, b in zip(path, path[1:]))


def test_a_training_may_go_back_in_line_or_die_but_nothing_comes_back_from_the_end():
    assert can_move("training", "queued") and can_move("training", "dead") and can_move("queued", "dead")
    assert not can_move("done", "queued") and not can_move("dead", "training") and not can_move("failed", "queued")
    assert not can_move("queued", "validating")  # no version without a training


def test_every_state_is_reachable_from_queued():
    seen, todo = {RunState.QUEUED}, [RunState.QUEUED]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(RunState)
