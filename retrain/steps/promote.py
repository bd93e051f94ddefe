"""Promote: move ``production`` to the validated candidate and keep the old one as
``previous``, the rollback target. Every move is recorded in the alias history.

``promote_run`` is the immediate path (``retrain.promote``); the staged path
(shadow, canary stages) ends in the same :func:`finish_promotion`, called by
``retrain.steps.rollout_step`` when the last stage passes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from retrain.context import Context
from retrain.core.lifecycle import complete
from retrain.core.ports import UnitOfWork
from retrain.core.records import RunRecord
from retrain.steps.sweep import refresh_drift_reference

__all__ = ["PromoteResult", "promote_run", "finish_promotion", "rollback"]


@dataclass(frozen=True)
class PromoteResult:
    run_id: str
    status: str
    version: str | None = None
    previous: str | None = None
    detail: str = ""


def promote_run(ctx: Context, run_id: str) -> PromoteResult:
    """Promote a validated run at once: a model's first version, or a model with shadow and rollout off.

    A run with a staged rollout is moved by ``retrain.evaluate_rollouts`` instead
    (``retrain.steps.rollout_step``); a message for it here is answered 'skipped'.
    """
    now = ctx.now()
    with ctx.store.tx() as tx:
        run = tx.runs.get(run_id, for_update=True)
        if run is None or run.state != "rollout":
            return PromoteResult(run_id, "skipped", detail=f"run is {run.state if run else 'unknown'}")
        if tx.rollouts.get(run_id) is not None:
            return PromoteResult(run_id, "skipped", detail="a staged rollout moves this run (retrain rollout MODEL)")
        tx.lock(f"retrain:aliases:{run.model}")
        reason = f"run {run.id[:8]} ({run.trigger}) validated"
        old = finish_promotion(tx, run, now, reason)
        return PromoteResult(run_id, "promoted", run.candidate_version, old, reason)


def finish_promotion(tx: UnitOfWork, run: RunRecord, now: datetime, reason: str) -> str | None:
    """The run's candidate becomes ``production`` and the old one ``previous``; audited. Returns the old one.

    Also clears ``candidate`` and ``canary``; called with the model's alias lock held.
    """
    model, version = run.model, run.candidate_version
    assert version is not None  # a run reaches promotion with its candidate trained
    old = tx.aliases.move(model, "production", version, actor="promotion", reason=reason, now=now)
    if old and old != version:
        tx.aliases.move(model, "previous", old, actor="promotion", reason=f"replaced by {version}", now=now)
        old_row = tx.versions.get(model, old)
        if old_row is not None:
            tx.versions.update(old_row, status="retired")
    for alias in ("candidate", "canary"):
        if tx.aliases.get(model, alias) is not None:
            tx.aliases.move(model, alias, None, actor="promotion", reason=f"{version} promoted", now=now)
    row = tx.versions.get(model, version)
    assert row is not None
    tx.versions.update(row, status="production")
    model_row = tx.models.get(model)
    if model_row is not None and model_row.deployed_at is None:
        tx.models.set_deployed(model, now)
    complete(tx, run, now)
    tx.audit.record(now, "promotion", "promotion", f"{model} {version} is production (previous: {old or 'none'})",
                    model=model, subject=version, data={"run_id": run.id, "previous": old, "reason": reason})
    # Drift is judged against what production was trained on: the new version's training window.
    refresh_drift_reference(tx, model, version, now, actor="promotion", reason=f"{version} promoted")
    return old


def rollback(ctx: Context, model: str, version: str | None = None, *, actor: str, reason: str,
             from_version: str | None = None, data: dict | None = None) -> PromoteResult:
    """Serve ``version`` as production again (default: ``previous``, or withdraw a running canary); audited.

    The target's artifact is verified first: a missing or altered file is refused
    (and audited) before any alias moves. A deleted version is refused with the date
    and reason of its deletion. Rules: :func:`retrain.registry.rollback`; ``data`` is added to its audit event.
    """
    from retrain.registry import resolve_rollback, verify_artifact
    from retrain.registry import rollback as registry_rollback

    target = version
    with ctx.store.tx() as tx:
        # A repeated message (from_version already out of service) is answered 'skipped' below.
        if from_version is None or from_version in (tx.aliases.get(model, "production"), tx.aliases.get(model,
                                                                                                        "canary")):
            target = resolve_rollback(tx, model, version)
            target_row = tx.versions.get(model, target)
            assert target_row is not None  # resolve_rollback refuses a version that is not there
            sha = target_row.artifact_sha256
            verify = True
        else:
            verify = False
    if verify:
        verify_artifact(ctx, sha, model=model, version=target, purpose="rollback", actor=actor)
    with ctx.store.tx() as tx:
        out = registry_rollback(tx, model, target, actor=actor, reason=reason, now=ctx.now(),
                                from_version=from_version, data=data)
    return PromoteResult("", out.status, out.production, out.replaced, out.detail)
