"""Validate: compare the candidate with production on the same held-out rows.

The holdout is the newest slice of the training window, never seen by the fit.
A candidate passes when there is no production version yet, or when it beats
production on the model's primary metric by the configured relative margin
(default 2 %, of the metric's magnitude: a Sharpe ratio may be negative); otherwise
it is rejected with the figures. Its holdout metrics become the version's validated
baseline, which the performance trigger compares live results against.

When the holdout carries the rows' market returns (the data source returned
``(X, y, ts, ret)``), both models are also scored on the strategy's returns, so the
baseline has a Sharpe ratio. A primary metric that cannot be computed (``sharpe``
without returns, or of constant returns) fails the run with the field to change.

A candidate that passes against a production version then has to prove itself on
live traffic: shadow, then the canary stages (``retrain.steps.rollout_step``). The
first version of a model, or one whose model file turns both off
(``validation.shadow_enabled = false`` and ``rollout.enabled = false``), is promoted
at once by ``retrain.promote``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from retrain.context import Context
from retrain.core.evidence import unplanned_paired_rows
from retrain.core.lifecycle import finish, reject, to_promotion
from retrain.core.metrics import finite_metrics, score
from retrain.core.rollout import PairedCounts, judge_paired
from retrain.steps.rollout_step import begin_rollout
from retrain.tasks import PROMOTE

__all__ = ["ValidateResult", "validate_run"]


@dataclass(frozen=True)
class ValidateResult:
    run_id: str
    status: str  # promote | shadow | canary | rejected | failed | skipped
    detail: str
    candidate: dict | None = None
    production: dict | None = None


def validate_run(ctx: Context, run_id: str) -> ValidateResult:
    with ctx.store.tx() as tx:
        run = tx.runs.get(run_id)
        if run is None or run.state != "validating":
            return ValidateResult(run_id, "skipped", f"run is {run.state if run else 'unknown'}")
        cfg = ctx.config.model(run.model)
        assert run.candidate_version is not None  # set by training before the run validates
        cand = tx.versions.get(run.model, run.candidate_version)
        assert cand is not None
        prod_name = tx.aliases.get(run.model, "production")
        prod = tx.versions.get(run.model, prod_name) if prod_name else None
        cand_sha, holdout_sha = cand.artifact_sha256, cand.metrics["holdout_sha256"]
        gate = dict(cand.metrics.get("gate") or {})
        prod_sha = prod.artifact_sha256 if prod else None
        prod_end = prod.data_end.timestamp() if prod is not None and prod.data_end is not None else None

    holdout = ctx.artifacts.load_object(holdout_sha)
    X, y, ret = holdout["X"], holdout["y"], holdout.get("ret")
    cand_model = ctx.artifacts.load_object(cand_sha)
    prod_model = ctx.artifacts.load_object(prod_sha) if prod_sha else None
    cand_m = score(cand_model, X, y, ret)
    prod_m = score(prod_model, X, y, ret) if prod_model is not None else None
    metric = cfg.primary_metric
    margin = cfg.validation.min_improvement
    unusable = _unusable(cfg, metric, cand_m, prod_m, ret is not None, len(y))
    if unusable is not None:
        return _fail(ctx, run_id, unusable, cand_m, prod_m)
    live = cfg.validation.shadow_enabled or cfg.rollout.enabled
    if prod_m is None:
        ok, detail = True, f"no production version yet; candidate {metric} {cand_m[metric]:.4f} on {len(y)} rows"
    elif gate.get("gate") == "walk_forward":
        ok, detail = _walk_forward(cfg, holdout.get("walk_forward"), gate)
        live = False
    elif live:
        ok, detail = _holdout_screen(cfg, holdout, cand_model, prod_model, prod_end, gate)
    else:
        # Both live phases off: the holdout's point estimate decides, as configured.
        # A relative margin of the metric's magnitude: for a negative Sharpe ratio too, better means higher.
        need = prod_m[metric] + margin * abs(prod_m[metric])
        ok = cand_m[metric] >= need
        detail = (f"candidate {metric} {cand_m[metric]:.4f} vs production {prod_name} {prod_m[metric]:.4f} "
                  f"on {len(y)} held-out rows; needs >= {need:.4f} (+{margin:.0%})")
    if ret is None and "sharpe" in cfg.thresholds.metrics:
        detail += (f"; no returns on the holdout, so no Sharpe baseline: the Sharpe trigger "
                   f"(models.{cfg.name}.thresholds.metrics) cannot fire for this version")
    cand_m, prod_m = finite_metrics(cand_m), finite_metrics(prod_m)

    now = ctx.now()
    with ctx.store.tx() as tx:
        run = tx.runs.get(run_id, for_update=True)
        assert run is not None  # read above; runs are never deleted
        if run.state != "validating":
            return ValidateResult(run_id, "skipped", f"run is {run.state}")
        assert run.candidate_version is not None
        cand = tx.versions.get(run.model, run.candidate_version)
        assert cand is not None
        metrics = {**cand.metrics, "holdout": cand_m, "production_holdout": prod_m,
                   "baseline": {k: v for k, v in cand_m.items() if k != "n"}}
        if gate:
            metrics["gate"] = {**gate, "verdict": "passed" if ok else "rejected", "detail": detail}
        cand = tx.versions.update(cand, metrics=metrics, status="candidate" if ok else "rejected")
        if ok:
            tx.audit.record(now, "validation", "validation", f"{run.model} {cand.version} passed: {detail}",
                            model=run.model, subject=cand.version, data={"candidate": cand_m, "production": prod_m,
                                                          "gate": gate or None})
            if prod_name is not None and live:
                # Proven on live traffic next: shadow, then the canary stages (retrain.steps.rollout_step).
                status = begin_rollout(tx, ctx, run, cfg, prod_name, now, detail)
                return ValidateResult(run_id, status, detail, cand_m, prod_m)
            to_promotion(tx, run)
            tx.aliases.move(run.model, "candidate", cand.version, actor="validation", reason=detail, now=now)
            tx.outbox.enqueue(PROMOTE, {"v": 1, "run_id": run.id}, now, priority=run.priority)
        else:
            reject(tx, run, detail, now)
            tx.audit.record(now, "validation", "validation", f"{run.model} {cand.version} rejected: {detail}",
                            model=run.model, subject=cand.version, data={"candidate": cand_m, "production": prod_m,
                                                          "gate": gate or None})
    return ValidateResult(run_id, "promote" if ok else "rejected", detail, cand_m, prod_m)


def _walk_forward(cfg, walk: dict | None, gate: dict) -> tuple[bool, str]:
    """The final gate of a candidate whose live rows cannot arrive in time (retrain.core.evidence)."""
    v = cfg.validation
    why = gate.get("reason", "walk-forward")
    if not walk or len(walk["y"]) == 0:
        return False, f"{why}; no labelled row newer than production's training data to compare on"
    paired = PairedCounts.from_arrays(walk["y"], walk["candidate"], walk["production"], walk.get("ret"))
    verdict, said = judge_paired(paired, metric=cfg.primary_metric, min_improvement=v.min_improvement,
                                 confidence=v.confidence, rows_needed=int(gate.get("rows_needed", 0)), final=True)
    refits = walk.get("refits", 0)
    return verdict == "pass", (f"{why}. Walk-forward over the {paired.n} newest labelled rows production never "
                               f"trained on ({refits} refit{'s' if refits != 1 else ''}, none scored on rows it saw; "
                               f"the test needs {int(gate.get('rows_needed', 0)):,} for +{v.min_improvement:.0%} at "
                               f"{v.power:.0%} power): {said}")


def _holdout_screen(cfg, holdout: dict, cand_model, prod_model, prod_end: float | None,
                    gate: dict) -> tuple[bool, str]:
    """The holdout before a live gate, on the rows production never trained on: rejects only what it
    can show (a candidate worse, or below the goal on enough rows); the live gate decides the rest."""
    v = cfg.validation
    X, y, ts = holdout["X"], holdout["y"], holdout.get("ts")
    keep = slice(None) if prod_end is None or ts is None else slice(int(np.searchsorted(ts, prod_end, side="right")),
                                                                    None)
    X, y = X[keep], y[keep]
    ret = holdout["ret"][keep] if holdout.get("ret") is not None else None
    n_all = len(holdout["y"])
    if len(y):
        paired = PairedCounts.from_arrays(y, cand_model.predict(X), prod_model.predict(X), ret)
    else:
        paired = PairedCounts()
    needed = int(gate.get("rows_needed")
                 or unplanned_paired_rows(paired.production.accuracy if paired.n >= 30 else None, v))
    verdict, said = judge_paired(paired, metric=cfg.primary_metric, min_improvement=v.min_improvement,
                                 confidence=v.confidence, rows_needed=needed, final=False)
    seen = f" ({n_all - len(y)} of its {n_all} rows left out: production trained on them)" if len(y) < n_all else ""
    plan = f"; next: {gate['reason']}" if gate.get("reason") else ""
    return verdict != "reject", f"holdout{seen}: {said}{plan}"


def _unusable(cfg, metric: str, cand_m: dict, prod_m: dict | None, has_returns: bool, rows: int) -> str | None:
    """Why the primary metric cannot decide this validation, or None."""
    field = f"models.{cfg.name}.primary_metric"
    if metric == "sharpe" and not has_returns:
        return (f"{field} = 'sharpe' needs returns, and the holdout has none: the data source "
                f"{cfg.data_source!r} must return (X, y, ts, ret), or choose accuracy, precision, recall or f1")
    for who, m in (("candidate", cand_m), ("production", prod_m)):
        if m is not None and not math.isfinite(m.get(metric, float("nan"))):
            return (f"{field} = {metric!r} is undefined for the {who} on the {rows} held-out rows "
                    f"(a Sharpe ratio needs at least two returns that are not all equal)")
    return None


def _fail(ctx: Context, run_id: str, reason: str, cand_m: dict, prod_m: dict | None) -> ValidateResult:
    """End the run ``failed`` with the reason: a configuration to fix, not a candidate to judge."""
    now = ctx.now()
    with ctx.store.tx() as tx:
        run = tx.runs.get(run_id, for_update=True)
        assert run is not None  # read above; runs are never deleted
        if run.state != "validating":
            return ValidateResult(run_id, "skipped", f"run is {run.state}")
        assert run.candidate_version is not None
        cand = tx.versions.get(run.model, run.candidate_version)
        assert cand is not None
        tx.versions.update(cand, status="rejected", metrics={**cand.metrics, "holdout": finite_metrics(cand_m),
                                                             "production_holdout": finite_metrics(prod_m)})
        finish(tx, run, "failed", f"validation of {run.model} {cand.version} failed: {reason}", now,
               actor="validation")
    return ValidateResult(run_id, "failed", reason, finite_metrics(cand_m), finite_metrics(prod_m))
