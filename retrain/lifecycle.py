"""A training run's lifecycle: the states it moves through and how it ends.

::

    queued ──► training ──► validating ──► shadow ──► rollout ──► done
      ▲  │        │   │          │            │          │
      │  │        │   └──────────┴────────────┴──────────┴──► rejected | failed | cancelled
      │  └────────┴──► dead      (attempts used up: RETRAIN_MAX_ATTEMPTS)
      └───────────┘  lease expired, waiting for a slot or a dependency: back to queued

``done``, ``rejected``, ``failed``, ``dead`` and ``cancelled`` are final. A run moves
only along these arrows; :func:`can_move` says whether a move is one of them, and
:func:`finish` ends a run in one place: the reason on the row, the cost reservation
and the training slot given back, and an audit event, in the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime

from retrain import slots
from retrain.domain import RunState
from retrain.storage.models import RunRow
from retrain.storage.repo import Tx

__all__ = ["TRANSITIONS", "FINAL", "can_move", "finish"]

_Q, _T, _V, _S, _R = RunState.QUEUED, RunState.TRAINING, RunState.VALIDATING, RunState.SHADOW, RunState.ROLLOUT
_DONE, _REJ, _FAIL, _DEAD, _CANC = RunState.DONE, RunState.REJECTED, RunState.FAILED, RunState.DEAD, RunState.CANCELLED

TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    _Q: frozenset({_T, _FAIL, _DEAD, _CANC}),
    _T: frozenset({_Q, _V, _FAIL, _DEAD, _CANC}),
    _V: frozenset({_S, _R, _DONE, _REJ, _FAIL, _CANC}),
    _S: frozenset({_R, _DONE, _REJ, _FAIL, _CANC}),
    _R: frozenset({_DONE, _REJ, _FAIL, _CANC}),
    _DONE: frozenset(), _REJ: frozenset(), _FAIL: frozenset(), _DEAD: frozenset(), _CANC: frozenset(),
}
FINAL: frozenset[RunState] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


def can_move(src: str | RunState, dst: str | RunState) -> bool:
    """True if a run in ``src`` may move to ``dst``."""
    return RunState(dst) in TRANSITIONS[RunState(src)]


def finish(tx: Tx, run: RunRow, state: str | RunState, reason: str, now: datetime, *, actor: str = "system") -> bool:
    """End a run in ``state`` (failed, dead, cancelled, rejected) with its reason.

    Gives back what the run still holds (its cost reservation and its training
    slot) and writes the audit event. Returns False, changing nothing, when the run
    cannot move there (it already ended).
    """
    target = RunState(state)
    if target not in FINAL or not can_move(run.state, target):
        return False
    attempt = run.attempt
    run.state, run.error, run.finished_at = target.value, reason, now
    run.lease_owner, run.lease_expires_at = None, None
    run.stage = target.value
    reserved = tx.held_reservation(run.id)
    if reserved:
        tx.add_cost(run.id, run.model, "release", -reserved, now, {"reason": reason})
    slots.release(tx, run.id)
    tx.audit(now, "run", actor, f"run of {run.model} {target.value}: {reason}", model=run.model, subject=run.id,
             data={"state": target.value, "reason": reason, "attempt": attempt})
    return True
