"""A training run's lifecycle: the states it moves through, and the only code that moves it.

::

    queued ──► training ──► validating ──► shadow ──► rollout ──► done

    training ──► queued            the lease was lost, the attempt failed, or no slot: back in line
    training ──► training          a new attempt takes over an expired lease
    validating ──► rollout         no shadow (canary at once), or promoted at once ('promoting')
    shadow ──► done                shadow passed and no staged rollout is configured
    validating | shadow | rollout ──► rejected       the validation or rollout verdict
    any state not final ──► failed | cancelled;  queued | training ──► dead

``done``, ``rejected``, ``failed``, ``dead`` and ``cancelled`` are final. A run moves
only along :data:`TRANSITIONS`, and only through the functions below, one per move
(a test reads the source for any other write of a run's state or stage):

======================  =============================  ==========================================
function                move                           who (fenced by attempt / lease owner)
======================  =============================  ==========================================
:func:`new_run`         (new) -> queued                decide: an approved request
:func:`start_training`  queued | training -> training  train: the claim, a new attempt (the fence)
:func:`hold`            queued | training -> queued    train: waits for a slot or a dependency
:func:`progress`        training (stage only)          train: the lease holder (attempt)
:func:`requeue`         training -> queued             train / reconcile: attempt failed or lost
:func:`to_validating`   training -> validating         train: the lease holder (attempt, owner)
:func:`enter_shadow`    validating -> shadow           validate
:func:`enter_canary`    validating | shadow -> rollout validate / rollout: the first canary stage
:func:`advance_canary`  rollout (stage only)           rollout: the next canary stage
:func:`to_promotion`    validating -> rollout          validate: promoted at once (``promoting``)
:func:`complete`        shadow | rollout -> done       promotion
:func:`reject`          validating | shadow | rollout  validation or rollout verdict
                        -> rejected
:func:`fence`           (no move)                      checks that an attempt still holds the lease
:func:`finish`          any -> failed | dead |         failures, with the run's holdings given
                        cancelled | rejected           back and an audit event (optionally fenced)
======================  =============================  ==========================================

Each function takes the unit of work and the run as read (a frozen
:class:`~retrain.core.records.RunRecord`), writes the move through
:meth:`~retrain.core.ports.RunRepository.write` (which refuses it if the run's state or
attempt changed since it was read) and returns the run as it now is. A move the table
does not allow raises :class:`TransitionError` naming the run, its state and the move;
a write by an attempt that lost its lease raises :class:`~retrain.core.errors.StaleLeaseError`.
:func:`finish` alone answers False instead, so that ending a run twice (a duplicate
message) is harmless.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from retrain.core.domain import RunState, new_id
from retrain.core.errors import StaleLeaseError, TransitionError
from retrain.core.ports import UnitOfWork
from retrain.core.records import RunRecord

__all__ = ["TRANSITIONS", "FINAL", "TransitionError", "can_move", "fence", "new_run", "start_training", "hold",
           "progress", "requeue", "to_validating", "enter_shadow", "enter_canary", "advance_canary", "to_promotion",
           "complete", "reject", "finish"]

_Q, _T, _V, _S, _R = RunState.QUEUED, RunState.TRAINING, RunState.VALIDATING, RunState.SHADOW, RunState.ROLLOUT
_DONE, _REJ, _FAIL, _DEAD, _CANC = RunState.DONE, RunState.REJECTED, RunState.FAILED, RunState.DEAD, RunState.CANCELLED

TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    _Q: frozenset({_T, _FAIL, _DEAD, _CANC}),
    # training -> training: a new attempt takes over a lease that expired (or that its own
    # process holds but no longer runs); the attempt counter moves on, fencing the old one off.
    _T: frozenset({_T, _Q, _V, _FAIL, _DEAD, _CANC}),
    _V: frozenset({_S, _R, _REJ, _FAIL, _CANC}),
    _S: frozenset({_R, _DONE, _REJ, _FAIL, _CANC}),
    _R: frozenset({_DONE, _REJ, _FAIL, _CANC}),
    _DONE: frozenset(), _REJ: frozenset(), _FAIL: frozenset(), _DEAD: frozenset(), _CANC: frozenset(),
}
FINAL: frozenset[RunState] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
_NO_LEASE: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}


def can_move(src: str | RunState, dst: str | RunState) -> bool:
    """True if a run in ``src`` may move to ``dst``."""
    return RunState(dst) in TRANSITIONS[RunState(src)]


def _move(tx: UnitOfWork, run: RunRecord, target: RunState, move: str, **changes: Any) -> RunRecord:
    if not can_move(run.state, target):
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[RunState(run.state)])) or "nothing (final)"
        raise TransitionError(f"run {run.id} of {run.model} is {run.state}: {move} would move it to "
                              f"{target.value}, which its lifecycle does not allow (from {run.state}: {allowed})")
    return tx.runs.write(run, {"state": target.value, **changes})


def _stay(tx: UnitOfWork, run: RunRecord, state: RunState, move: str, **changes: Any) -> RunRecord:
    """A change of stage within ``state``: refused, like a move, when the run is elsewhere."""
    if run.state != state.value:
        raise TransitionError(f"run {run.id} of {run.model} is {run.state}: {move} needs it {state.value}")
    return tx.runs.write(run, changes)


def fence(run: RunRecord, *, attempt: int, owner: str | None = None, doing: str = "stopped") -> None:
    """Raise :class:`~retrain.core.errors.StaleLeaseError` unless ``attempt`` (and ``owner``) still trains the run.

    ``doing`` ends the message: what the stale attempt does not get to write.
    """
    if run.attempt != attempt or run.state != _T.value or (owner is not None and run.lease_owner != owner):
        raise StaleLeaseError(f"run {run.id} attempt {attempt} lost its lease (now attempt {run.attempt}, "
                              f"owner {run.lease_owner}, state {run.state}); {doing}")


def new_run(tx: UnitOfWork, *, model: str, request_id: str, decision_id: str, trigger: str, priority: int,
            now: datetime) -> RunRecord:
    """A run is born ``queued``, waiting for a training slot."""
    run = RunRecord(id=new_id(), model=model, request_id=request_id, decision_id=decision_id, trigger=trigger,
                    priority=priority, state=_Q.value, attempt=0, lease_owner=None, lease_expires_at=None,
                    created_at=now, started_at=None, finished_at=None, stage="", progress=0.0, error=None,
                    candidate_version=None, blocked_on=None, usage={}, heartbeat_at=None, dispatched_at=None)
    tx.runs.insert(run)
    return run


def start_training(tx: UnitOfWork, run: RunRecord, *, owner: str, now: datetime, lease_until: datetime) -> RunRecord:
    """A new attempt takes the run's lease (``queued`` or an expired ``training``). The returned run's
    ``attempt`` is the fencing token every later write of this attempt is checked against."""
    if run.state == _T.value and run.lease_owner not in (None, owner) and run.lease_expires_at is not None \
            and run.lease_expires_at > now:
        raise StaleLeaseError(f"run {run.id} is held by {run.lease_owner} until {run.lease_expires_at.isoformat()}; "
                              f"{owner} cannot start another attempt")
    return _move(tx, run, _T, "start_training", attempt=run.attempt + 1, stage="loading data", progress=0.05,
                 blocked_on=None, lease_owner=owner, lease_expires_at=lease_until, heartbeat_at=now,
                 started_at=run.started_at or now)


def hold(tx: UnitOfWork, run: RunRecord, reason: str) -> RunRecord:
    """Keep the run queued, saying what it waits for (an expired attempt goes back in line)."""
    if run.state == _T.value:
        return _move(tx, run, _Q, "hold", blocked_on=reason, stage="waiting", **_NO_LEASE)
    return _stay(tx, run, _Q, "hold", blocked_on=reason, stage="waiting")


def progress(tx: UnitOfWork, run: RunRecord, stage: str, pct: float, *, attempt: int) -> RunRecord:
    """The training attempt that holds the lease reports its stage."""
    fence(run, attempt=attempt, doing=f"stage '{stage}' not recorded")
    return tx.runs.write(run, {"stage": stage, "progress": pct})


def requeue(tx: UnitOfWork, run: RunRecord, *, attempt: int, reason: str, now: datetime) -> RunRecord:
    """Attempt ``attempt`` failed or lost its lease: the run goes back in line to be sent again."""
    fence(run, attempt=attempt, doing="not queued again")
    return _move(tx, run, _Q, "requeue", stage="retrying", blocked_on=None, error=reason, dispatched_at=now,
                 **_NO_LEASE)


def to_validating(tx: UnitOfWork, run: RunRecord, version: str | None, *, attempt: int, owner: str,
                  usage: dict[str, Any] | None = None) -> RunRecord:
    """The attempt holding the lease registered ``version``: the run goes to validation."""
    fence(run, attempt=attempt, owner=owner, doing="nothing registered")
    extra = {"usage": usage} if usage is not None else {}
    return _move(tx, run, _V, "to_validating", stage=_V.value, progress=1.0, candidate_version=version,
                 **_NO_LEASE, **extra)


def enter_shadow(tx: UnitOfWork, run: RunRecord) -> RunRecord:
    """The candidate passed the holdout and is scored on live traffic, serving none."""
    return _move(tx, run, _S, "enter_shadow", stage=_S.value)


def enter_canary(tx: UnitOfWork, run: RunRecord, share_pct: float) -> RunRecord:
    """The candidate serves its first canary share."""
    return _move(tx, run, _R, "enter_canary", stage=f"canary {share_pct:g}%")


def advance_canary(tx: UnitOfWork, run: RunRecord, share_pct: float) -> RunRecord:
    """The canary moves to its next stage's share."""
    return _stay(tx, run, _R, "advance_canary", stage=f"canary {share_pct:g}%")


def to_promotion(tx: UnitOfWork, run: RunRecord) -> RunRecord:
    """The candidate passed validation and is promoted at once (no live phase): the promote step is next."""
    return _move(tx, run, _R, "to_promotion", stage="promoting")


def complete(tx: UnitOfWork, run: RunRecord, now: datetime) -> RunRecord:
    """The candidate is production: the run is done."""
    return _move(tx, run, _DONE, "complete", stage=_DONE.value, finished_at=now)


def reject(tx: UnitOfWork, run: RunRecord, reason: str, now: datetime, *, stage: str = _REJ.value) -> RunRecord:
    """Validation or the rollout judged the candidate: production stays. ``stage`` says how it ended
    (rejected, shadow_rejected, rolled_back, aborted, inconclusive); the caller audits the figures."""
    return _move(tx, run, _REJ, "reject", stage=stage, finished_at=now, error=reason, **_NO_LEASE)


def finish(tx: UnitOfWork, run: RunRecord, state: str | RunState, reason: str, now: datetime, *,
           actor: str = "system", attempt: int | None = None, owner: str | None = None) -> bool:
    """End a run in ``state`` (failed, dead, cancelled, rejected) with its reason.

    Gives back what the run still holds (its cost reservation and its training
    slot) and writes the audit event. Returns False, changing nothing, when the run
    cannot move there (it already ended), or, given ``attempt`` or ``owner``, when
    the run is no longer trained by that attempt or lease holder.
    """
    target = RunState(state)
    if target not in FINAL or target is _DONE or not can_move(run.state, target):
        return False
    if (attempt is not None or owner is not None) and (
            run.state != _T.value or (attempt is not None and run.attempt != attempt)
            or (owner is not None and run.lease_owner != owner)):
        return False
    _move(tx, run, target, "finish", error=reason, finished_at=now, stage=target.value, **_NO_LEASE)
    reserved = tx.ledger.held_reservation(run.id)
    if reserved:
        tx.ledger.add(run.id, run.model, "release", -reserved, now, {"reason": reason})
    tx.slots.release(run.id)
    tx.audit.record(now, "run", actor, f"run of {run.model} {target.value}: {reason}", model=run.model,
                    subject=run.id, data={"state": target.value, "reason": reason, "attempt": run.attempt})
    return True
