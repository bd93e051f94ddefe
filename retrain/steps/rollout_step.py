"""Shadow and canary steps: begin a rollout, evaluate it periodically, confirm a gate, describe it.

``begin_rollout`` is called by the validate step when the holdout check passes and a
production version exists. ``evaluate_rollouts`` (task ``retrain.evaluate_rollouts``
on the ``validation`` queue, run periodically by beat, the demo and the backtester)
looks at every rollout in progress: it scores a shadow on the live rows logged
since the last evaluation, or compares the canary's labelled outcomes with
production's over the current stage, asks the pure rules in :mod:`retrain.core.rollout`
what to do, and applies the answer in one transaction with the alias moves and the
audit event:

========== ==========================================================================
action     effect
========== ==========================================================================
wait/hold  the figures and what is still needed are stored (``retrain rollout MODEL``)
gate       waits for ``retrain promote MODEL --confirm`` (rollout.manual_gate)
pass       shadow passed: ``candidate`` cleared, ``canary`` at the first share
advance    ``canary`` share moves to the next stage
complete   ``production`` = the candidate, ``previous`` = the old one, ``canary`` cleared
rollback   ``canary`` cleared at once (production never moved), audited with the figures
reject     shadow showed it worse (or unable to reach the required improvement)
inconclusive / stall   shadow or a stage ran out of time; production unchanged
abort      production or the canary was moved by someone else (e.g. ``retrain rollback``), or an
           emergency fired on production (:func:`abort_rollouts`, called by the sweep)
========== ==========================================================================

The trading app's :class:`retrain.serving.ModelRouter` follows the aliases it reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from retrain.config import ModelConfig
from retrain.context import Context
from retrain.core.emergency import EmergencyConfig
from retrain.core.errors import ArtifactError, RetrainError, TransientError
from retrain.core.evidence import unplanned_paired_rows
from retrain.core.lifecycle import advance_canary, enter_canary, enter_shadow, reject
from retrain.core.ports import UnitOfWork
from retrain.core.records import RolloutRecord, RunRecord
from retrain.core.rollout import (
    PairedCounts,
    Phase,
    RolloutState,
    ShadowVerdict,
    StageVerdict,
    canary_emergency,
    judge_shadow,
    judge_stage,
)
from retrain.core.windows import Counts
from retrain.steps.promote import finish_promotion

__all__ = ["RolloutResult", "EvaluateResult", "begin_rollout", "evaluate_rollouts", "evaluate_rollout",
           "confirm_rollout", "describe_rollout", "abort_rollouts"]

log = logging.getLogger("retrain.rollout")
ACTOR = "rollout"
_SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")


@dataclass(frozen=True)
class RolloutResult:
    run_id: str
    model: str
    action: str
    phase: str
    share_pct: float = 0.0
    detail: str = ""


@dataclass
class EvaluateResult:
    results: list[RolloutResult] = field(default_factory=list)

    @property
    def actions(self) -> dict[str, str]:
        return {r.model: r.action for r in self.results}


def _lock(tx: UnitOfWork, model: str) -> None:
    # Same lock as every alias move (retrain.registry): one writer of a model's aliases at a time.
    tx.lock(f"retrain:aliases:{model}")


def _minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def _state(ro: RolloutRecord, cfg: ModelConfig) -> RolloutState:
    stages = tuple(float(x) for x in ro.stages) if ro.stages else tuple(cfg.rollout.stages)
    return RolloutState(Phase(ro.phase), stages, ro.stage, ro.started_at, ro.stage_started_at, ro.finished_at)


# ---------------------------------------------------------------------------- begin
def begin_rollout(tx: UnitOfWork, ctx: Context, run: RunRecord, cfg: ModelConfig, production: str, now: datetime,
                  holdout_detail: str) -> str:
    """Start shadow (or, with shadow off, the first canary stage) for a candidate that passed the holdout."""
    version = run.candidate_version
    assert version is not None  # validated, so trained
    stages = tuple(float(s) for s in cfg.rollout.stages)
    state = RolloutState.begin(stages, now, shadow=cfg.validation.shadow_enabled)
    ro = tx.rollouts.add(run_id=run.id, model=run.model, candidate_version=version, baseline_version=production,
                         phase=state.phase.value, stages=list(stages), stage=state.stage, share_pct=state.share_pct,
                         started_at=now, stage_started_at=now,
                         canary_started_at=None if state.phase is Phase.SHADOW else now,
                         updated_at=now, finished_at=None, gate=None, gate_by=None, scored_until=0, paired={},
                         figures={}, history=[], outcome="")
    if state.phase is Phase.SHADOW:
        v = cfg.validation
        tx.aliases.move(run.model, "candidate", version, actor="validation", reason=holdout_detail, now=now)
        run = enter_shadow(tx, run)
        row = tx.versions.get(run.model, version)
        assert row is not None
        tx.versions.update(row, status="candidate")
        tx.audit.record(now, "validation", "validation",
                        f"{run.model} {version} enters shadow against production {production}: "
                        f"{v.shadow_min_hours:g}-{v.shadow_max_hours:g} h, "
                        f">= {_shadow_rows(tx, run, v)} labelled live rows, "
                        f">= +{v.min_improvement:.0%} {cfg.primary_metric} at {v.confidence:.0%} confidence",
                        model=run.model, subject=version, data={"run_id": run.id, "production": production})
        return "shadow"
    _enter_canary(tx, run, ro, cfg, now, f"holdout passed ({holdout_detail}); shadow is disabled")
    return "canary"


def _shadow_rows(tx: UnitOfWork, run: RunRecord, v) -> str:
    if v.shadow_min_rows is not None:
        return f"{v.shadow_min_rows}"
    assert run.candidate_version is not None
    cand = tx.versions.get(run.model, run.candidate_version)
    assert cand is not None
    gate = (cand.metrics or {}).get("gate") or {}
    return f"{gate['rows_needed']:,} (what the paired test needs)" if gate.get("rows_needed") else "the sized number of"


def _enter_canary(tx: UnitOfWork, run: RunRecord, ro: RolloutRecord, cfg: ModelConfig, now: datetime, why: str) -> None:
    share = ro.share_pct
    if tx.aliases.get(run.model, "candidate") == ro.candidate_version:
        tx.aliases.move(run.model, "candidate", None, actor=ACTOR, reason=f"{ro.candidate_version} enters canary",
                        now=now)
    tx.aliases.move(run.model, "canary", ro.candidate_version, actor=ACTOR, reason=f"canary at {share:g}%: {why}",
                    now=now, share_pct=share)
    row = tx.versions.get(run.model, ro.candidate_version)
    assert row is not None
    tx.versions.update(row, status="canary")
    enter_canary(tx, run, share)
    tx.audit.record(now, "rollout", ACTOR, f"{run.model} {ro.candidate_version} canary at {share:g}% of traffic "
                    f"(stage 1 of {len(_state(ro, cfg).stages)}): {why}", model=run.model, subject=ro.candidate_version,
                    data={"run_id": run.id, "share_pct": share, "stage": 1})


# ---------------------------------------------------------------------------- evaluate
def evaluate_rollouts(ctx: Context, models: list[str] | None = None) -> EvaluateResult:
    """Evaluate every rollout in progress (of ``models``, default all)."""
    with ctx.store.tx() as tx:
        ids = [r.run_id for r in tx.rollouts.active() if models is None or r.model in models]
    out = EvaluateResult()
    for run_id in ids:
        try:
            out.results.append(evaluate_rollout(ctx, run_id))
        except TransientError:
            raise  # the database is away: the task retries, and so will the next tick
        except Exception as exc:  # one broken rollout must not stop the others' evaluation
            log.exception("evaluating rollout of run %s failed", run_id)
            out.results.append(RolloutResult(run_id, "", "error", "unknown", detail=f"{type(exc).__name__}: {exc}"))
    return out


def evaluate_rollout(ctx: Context, run_id: str) -> RolloutResult:
    with ctx.store.tx() as tx:
        ro = tx.rollouts.get(run_id)
        if ro is None or Phase(ro.phase).is_final:
            return RolloutResult(run_id, ro.model if ro else "", "skipped", ro.phase if ro else "unknown")
        model, phase, scored_until = ro.model, ro.phase, ro.scored_until
        baseline, started = ro.baseline_version, ro.started_at
        cand_row = tx.versions.get(model, ro.candidate_version)
        cand_sha = cand_row.artifact_sha256 if cand_row else None
        planned_rows = ((cand_row.metrics or {}).get("gate") or {}).get("rows_needed") if cand_row else None
    cfg = ctx.config.models.get(model)
    if cfg is None:
        return RolloutResult(run_id, model, "skipped", phase, detail=f"{model} is not configured")

    batch = None
    refused = None
    if phase == Phase.SHADOW.value and baseline and cand_sha:
        from retrain.steps.shadow import score_new_rows

        try:
            batch = score_new_rows(ctx, model=model, candidate_sha256=cand_sha, baseline=baseline, since=started,
                                   after_id=scored_until)
        except ArtifactError as exc:
            refused = f"the candidate's artifact was refused: {exc}"

    with ctx.store.tx() as tx:
        _lock(tx, model)
        # Read once the lock is ours: the rollout is judged as it stands now, not as it stood
        # before waiting for another evaluation or a confirmation to commit.
        now = ctx.now()
        ro = tx.rollouts.get(run_id, for_update=True)
        run = tx.runs.get(run_id, for_update=True)
        assert ro is not None and run is not None  # read above; rollouts and runs are never deleted
        if ro.phase != phase or (batch is not None and ro.scored_until != scored_until):
            # Another evaluation got here first; its result stands.
            return RolloutResult(run_id, model, "skipped", ro.phase, ro.share_pct, "evaluated concurrently")
        moved = _moved_by_someone_else(tx, ro)
        why = refused or moved
        if why:
            return _apply(tx, cfg, run, ro, "abort", why, dict(ro.figures), (), now)
        if phase == Phase.SHADOW.value:
            paired = PairedCounts.from_json(ro.paired) + (batch.paired if batch else PairedCounts())
            ro = tx.rollouts.update(ro, paired=paired.to_json(),
                                    scored_until=batch.last_id if batch is not None else ro.scored_until)
            verdict: ShadowVerdict | StageVerdict = _judge_shadow(cfg, ro, paired, now, planned_rows)
        else:
            verdict = _judge_canary(tx, cfg, ro, now)
        # Judged as of ``now``, applied as of the clock after judging: a new stage starts when its
        # alias moves, so the time the judging took (seconds on a loaded machine, where a fresh
        # process also imports scipy here) is not taken from the stage's minimum duration.
        return _apply(tx, cfg, run, ro, verdict.action, verdict.reason, verdict.figures, verdict.needs, ctx.now())


def _moved_by_someone_else(tx: UnitOfWork, ro: RolloutRecord) -> str | None:
    prod = tx.aliases.get(ro.model, "production")
    if prod != ro.baseline_version:
        return f"production moved from {ro.baseline_version} to {prod or 'none'} outside the rollout"
    if ro.phase == Phase.CANARY.value and tx.aliases.get(ro.model, "canary") != ro.candidate_version:
        return f"the canary alias no longer points at {ro.candidate_version} (withdrawn outside the rollout)"
    return None


def _judge_shadow(cfg: ModelConfig, ro: RolloutRecord, paired: PairedCounts, now: datetime,
                  planned_rows: int | None) -> ShadowVerdict:
    # Without a plan (a version trained before gates were sized) the paired test's rows are sized
    # from production's level at the +min_improvement goal and the floor disagreement.
    if planned_rows is None and cfg.validation.shadow_min_rows is None:
        level = paired.production.accuracy if paired.n >= 30 else None
        planned_rows = unplanned_paired_rows(level, cfg.validation)
    return judge_shadow(paired, now - ro.started_at, cfg.validation, metric=cfg.primary_metric,
                        manual_gate=cfg.rollout.manual_gate and cfg.rollout.enabled, confirmed=ro.gate == "confirmed",
                        min_rows=planned_rows)


def _counts(rows) -> Counts:
    return sum((Counts(n=r.n, tp=r.tp, fp=r.fp, tn=r.tn, fn=r.fn, ret_sum=r.ret_sum, ret_sq_sum=r.ret_sq_sum)
                for r in rows), Counts())


def _judge_canary(tx: UnitOfWork, cfg: ModelConfig, ro: RolloutRecord, now: datetime) -> StageVerdict:
    """The current stage's labelled outcomes: the canary's against production's over the same minutes.

    At 100 % production serves nothing in the stage, so its reference is what it
    served during the earlier stages of this rollout.
    """
    state = _state(ro, cfg)
    since = _minute(ro.stage_started_at)
    canary = _counts(tx.monitoring.buckets(ro.model, ro.candidate_version, since))
    if state.share_pct >= 100.0:
        production = _counts(tx.monitoring.buckets(ro.model, ro.baseline_version,
                                                   _minute(ro.canary_started_at or ro.started_at),
                                                   since))
    else:
        production = _counts(tx.monitoring.buckets(ro.model, ro.baseline_version, since))
    firing = None
    e = cfg.emergency
    if e.enabled:
        ecfg = EmergencyConfig.from_sigma(e.sigma, history_buckets=e.history_buckets, bucket_minutes=e.bucket_minutes,
                                          min_samples=e.min_samples)
        window = now - timedelta(minutes=e.bucket_minutes) * (ecfg.history_buckets + ecfg.consecutive)

        def pick(version: str | None, start: datetime) -> list[tuple[datetime, Counts]]:
            return [(r.minute, _counts([r])) for r in tx.monitoring.buckets(ro.model, version, start)]

        firing = canary_emergency(pick(ro.baseline_version, window),
                                  pick(ro.candidate_version, max(window, since)), now, ecfg)
        # The same bar as the sweep's: below min_severity an emergency is noise, not a reason to act.
        if firing is not None:
            assert firing.severity is not None  # an emergency firing always has one
            if _SEVERITIES.index(firing.severity.value) < _SEVERITIES.index(e.min_severity):
                firing = None
    return judge_stage(canary, production, share=state.share_pct, stage=state.stage, n_stages=len(state.stages),
                       elapsed=now - ro.stage_started_at, settings=cfg.rollout, confidence=cfg.validation.confidence,
                       metric=cfg.primary_metric, emergency=firing, confirmed=ro.gate == "confirmed",
                       power=cfg.validation.power)


# ---------------------------------------------------------------------------- apply
def _apply(tx: UnitOfWork, cfg: ModelConfig, run: RunRecord, ro: RolloutRecord, action: str, reason: str, figures: dict,
           needs: tuple[str, ...], now: datetime) -> RolloutResult:
    model, version = ro.model, ro.candidate_version
    state = _state(ro, cfg)
    ro = tx.rollouts.update(ro, updated_at=now, figures={**figures, "action": action, "reason": reason,
                                                         "needs": list(needs), "at": now.isoformat()})
    if action in ("wait", "hold"):
        return RolloutResult(run.id, model, action, ro.phase, ro.share_pct, reason)
    if action == "gate":
        if ro.gate is None:
            ro = tx.rollouts.update(ro, gate="waiting")
            tx.audit.record(now, "rollout", ACTOR, f"{model} {version} waits for confirmation "
                            f"(retrain promote {model} --confirm): {reason}", model=model, subject=version,
                            data={"run_id": run.id, "figures": figures})
        return RolloutResult(run.id, model, action, ro.phase, ro.share_pct, reason)

    ro = tx.rollouts.update(ro, history=[*ro.history, {
        "phase": ro.phase, "share_pct": ro.share_pct, "stage": ro.stage + 1,
        "started_at": ro.stage_started_at.isoformat(), "ended_at": now.isoformat(), "action": action,
        "figures": figures}])
    if action == "pass":
        tx.audit.record(now, "validation", "validation", f"{model} {version} passed shadow: {reason}", model=model,
                        subject=version, data={"run_id": run.id, "figures": figures})
        if cfg.rollout.enabled:
            nxt = state.next("pass", now)
            ro = tx.rollouts.update(ro, phase=nxt.phase.value, stage=nxt.stage, share_pct=nxt.share_pct,
                                    stage_started_at=now, canary_started_at=now, gate=None, gate_by=None)
            _enter_canary(tx, run, ro, cfg, now, "shadow passed")
            return RolloutResult(run.id, model, action, ro.phase, ro.share_pct, reason)
        action = "complete"  # no staged rollout configured: production at once
    if action == "advance":
        nxt = state.next("advance", now)
        old_share = ro.share_pct
        ro = tx.rollouts.update(ro, stage=nxt.stage, share_pct=nxt.share_pct, stage_started_at=now, gate=None,
                                gate_by=None)
        tx.aliases.move(model, "canary", version, actor=ACTOR, reason=f"stage {nxt.stage + 1}: {nxt.share_pct:g}%",
                        now=now, share_pct=nxt.share_pct)
        advance_canary(tx, run, nxt.share_pct)
        tx.audit.record(now, "rollout", ACTOR, f"{model} {version} canary {old_share:g}% -> {nxt.share_pct:g}% "
                        f"(stage {nxt.stage + 1} of {len(state.stages)}): {reason}", model=model, subject=version,
                        data={"run_id": run.id, "share_pct": nxt.share_pct, "figures": figures})
        return RolloutResult(run.id, model, action, ro.phase, ro.share_pct, reason)
    if action == "complete":
        ro = tx.rollouts.update(ro, phase=Phase.PROMOTED.value, finished_at=now, share_pct=0.0, outcome=reason)
        old = finish_promotion(tx, run, now, f"run {run.id[:8]} ({run.trigger}) passed its rollout: {reason}")
        return RolloutResult(run.id, model, "complete", ro.phase, 0.0, f"{version} is production (previous: {old})")

    # Every other action ends the rollout with production unchanged.
    final = state.next(action, now).phase
    was_share = ro.share_pct
    ro = tx.rollouts.update(ro, phase=final.value, finished_at=now, share_pct=0.0, outcome=reason)
    if tx.aliases.get(model, "canary") == version:
        tx.aliases.move(model, "canary", None, actor=ACTOR, reason=f"{action}: {reason}"[:2000], now=now)
    if tx.aliases.get(model, "candidate") == version:
        tx.aliases.move(model, "candidate", None, actor=ACTOR, reason=f"{action}: {reason}"[:2000], now=now)
    row = tx.versions.get(model, version)
    status = {"rollback": "rolled_back", "reject": "rejected"}.get(action, "withdrawn")
    if row is not None and row.status in ("candidate", "canary"):
        tx.versions.update(row, status=status)
    stage = {"rollback": "rolled_back", "reject": "shadow_rejected", "abort": "aborted"}.get(action, "inconclusive")
    reject(tx, run, reason, now, stage=stage)
    data = {"run_id": run.id, "figures": figures, "share_pct": was_share, "production": ro.baseline_version}
    if action == "rollback":
        tx.audit.record(now, "rollback", ACTOR, f"{model} canary {version} rolled back automatically at {was_share:g}% "
                        f"(production {ro.baseline_version} serves all traffic): {reason}", model=model,
                        subject=version,
                        data=data)
    elif action in ("reject", "inconclusive") and was_share == 0:
        tx.audit.record(now, "validation", "validation",
                        f"{model} {version} {'rejected in' if action == 'reject' else 'ended'}"
                        f" shadow{'' if action == 'reject' else ' inconclusive'}; production {ro.baseline_version} "
                        f"unchanged: {reason}", model=model, subject=version, data=data)
    else:
        tx.audit.record(now, "rollout", ACTOR, f"{model} {version} rollout ended ({final.value}) at {was_share:g}%; "
                        f"production {ro.baseline_version} unchanged: {reason}", model=model, subject=version,
                        data=data)
    return RolloutResult(run.id, model, action, final.value, 0.0, reason)


# ---------------------------------------------------------------------------- operators
def confirm_rollout(ctx: Context, model: str, *, actor: str, reason: str = "") -> RolloutResult:
    """``retrain promote MODEL --confirm``: let the rollout take its next step, now if it is due.

    A confirmation given before the stage's criteria are met stands for that stage:
    the step is taken at the first evaluation that finds them met.
    """
    now = ctx.now()
    with ctx.store.tx() as tx:
        active = tx.rollouts.active(model)
        if not active:
            raise RetrainError(f"{model} has no rollout in progress (see: retrain rollout {model})")
        _lock(tx, model)
        ro = tx.rollouts.get(active[0].run_id, for_update=True)
        assert ro is not None  # listed just above
        run_id, was = ro.run_id, ro.gate
        if was != "confirmed":
            ro = tx.rollouts.update(ro, gate="confirmed", gate_by=actor)
            where = "shadow" if ro.phase == Phase.SHADOW.value else f"canary {ro.share_pct:g}%"
            tx.audit.record(now, "approval", actor,
                            f"{model} {ro.candidate_version}: next rollout step confirmed at {where}"
                            + (f": {reason}" if reason else ""), model=model, subject=ro.candidate_version,
                            data={"run_id": run_id, "gate_was": was})
    return evaluate_rollout(ctx, run_id)


def describe_rollout(ctx: Context, model: str) -> dict[str, Any] | None:
    """The rollout in progress (else the latest one): stage, figures so far, and what the next step needs."""
    now = ctx.now()
    with ctx.store.tx() as tx:
        rows = tx.rollouts.active(model) or tx.rollouts.newest(model, limit=1)
        if not rows:
            return None
        ro = rows[0]
        cfg = ctx.config.models.get(model)
        verdict: ShadowVerdict | StageVerdict | None = None
        if cfg is not None and ro.phase == Phase.SHADOW.value:
            cand = tx.versions.get(model, ro.candidate_version)
            planned = ((cand.metrics or {}).get("gate") or {}).get("rows_needed") if cand else None
            verdict = _judge_shadow(cfg, ro, PairedCounts.from_json(ro.paired), now, planned)
        elif cfg is not None and ro.phase == Phase.CANARY.value:
            verdict = _judge_canary(tx, cfg, ro, now)
        figures = verdict.figures if verdict else dict(ro.figures)
        nxt = {"wait": "wait", "hold": "wait for evidence", "gate": "confirmation (retrain promote --confirm)",
               "pass": "enter the canary", "advance": "advance", "complete": "become production",
               "rollback": "roll back", "reject": "reject", "inconclusive": "end inconclusive",
               "stall": "end inconclusive"}
        return {
            "model": model, "run_id": ro.run_id, "candidate": ro.candidate_version, "production": ro.baseline_version,
            "phase": ro.phase, "stage": ro.stage + 1 if ro.phase == Phase.CANARY.value else None,
            "stages_pct": list(ro.stages),
            "share_pct": ro.share_pct, "started_at": ro.started_at, "stage_started_at": ro.stage_started_at,
            "finished_at": ro.finished_at, "gate": ro.gate, "gate_by": ro.gate_by,
            "figures": figures, "needs": list(verdict.needs) if verdict else [],
            "next": nxt.get(verdict.action, verdict.action) if verdict else None,
            "reason": verdict.reason if verdict else ro.outcome,
            "manual_gate": bool(cfg and cfg.rollout.manual_gate),
            "history": ro.history, "outcome": ro.outcome,
        }


# ---------------------------------------------------------------------------- emergencies
def abort_rollouts(tx: UnitOfWork, cfg: ModelConfig, model: str, reason: str, figures: dict, now: datetime, *,
                   keep_run: str | None = None) -> list[RolloutResult]:
    """Abort every rollout of ``model`` in shadow or canary (except ``keep_run``'s): an emergency on production.

    The canary or candidate alias is cleared (share 0 %), the run ends ``rejected``
    (stage ``aborted``) and the audit event gives ``reason``; called by the sweep in its
    transaction, which then lets the emergency's retraining start instead of joining
    the rollout's run.
    """
    out: list[RolloutResult] = []
    rows = [r for r in tx.rollouts.active(model) if r.run_id != keep_run]
    if not rows:
        return out
    _lock(tx, model)
    for r in rows:
        ro = tx.rollouts.get(r.run_id, for_update=True)
        if ro is None or Phase(ro.phase).is_final:
            continue
        run = tx.runs.get(ro.run_id, for_update=True)
        assert run is not None  # a rollout belongs to a run
        out.append(_apply(tx, cfg, run, ro, "abort", reason, dict(figures), (), now))
    return out
