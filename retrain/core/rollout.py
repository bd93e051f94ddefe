"""Shadow validation and staged rollout: the state machine and the statistics that move it (ADAPT-016).

A candidate that passed the offline holdout check proves itself on live traffic in
two phases, each judged here by a pure function of counts, durations and settings
(no I/O, no clock: the caller passes ``elapsed`` and ``now``).

**Shadow** (:func:`judge_shadow`). The candidate predicts the labelled live rows
that production served, off the hot path, so both models are scored on the *same*
rows (:class:`PairedCounts`). Once the minimum duration and row count are reached:

* ``pass`` when the primary metric improves by at least ``min_improvement``
  (relative, default 2 %) *and* a one-sided McNemar test on the discordant pairs
  (rows exactly one model got right) says the candidate is more often right, at
  ``confidence``. The exact binomial mid-p value is used: exact at small counts,
  less conservative than the plain exact test;
* ``reject`` when McNemar says the candidate is more often *wrong*, or (accuracy
  as primary metric) when even the upper confidence bound of the paired accuracy
  difference cannot reach the required improvement;
* otherwise shadow goes on, and ends ``inconclusive`` at the maximum duration.

**Canary stages** (:func:`judge_stage`). The canary serves ``share`` % of the
traffic, chosen by a stable hash of a routing key (``retrain.serving``). A stage
is judged on the labelled outcomes of the predictions the canary actually served
during the stage against production's over the same minutes (two independent
samples, so Fisher's exact test on hits and misses; Welch's t on strategy returns
for the Sharpe ratio). Only *labelled* counts enter, so a stage whose labels are
late simply waits for them. In order:

1. ``rollback`` at once when an emergency fires on the canary, or when its
   primary metric is at least ``rollback_degradation`` (relative, default 10 %)
   below production's *and* the one-sided test says it is worse at ``confidence``;
   this is checked from the first labelled outcome on, before any minimum;
2. ``wait`` until the stage has lasted ``stage_min_minutes`` and the canary has
   ``stage_min_samples`` labelled outcomes; ``hold`` while it looks that much worse
   without the evidence yet; either ends as ``stall`` (inconclusive, canary
   cleared) past ``stage_max_minutes``;
3. ``complete`` after the last stage (100 %): the candidate becomes production;
4. ``gate`` when a manual gate is configured and nobody confirmed yet;
5. ``advance`` to the next share.

>>> p = PairedCounts.from_arrays([1, 0, 1, 1, 0, 1], [1, 0, 1, 1, 0, 0], [0, 0, 1, 0, 1, 0])
>>> p.n, p.candidate_only, p.production_only
(6, 3, 0)
>>> round(mcnemar_p(3, 0), 4)
0.0625
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from retrain.core.emergency import EmergencyConfig, detect_emergency
from retrain.core.triggers import TriggerFiring
from retrain.core.windows import Counts

__all__ = [
    "Phase",
    "PairedCounts",
    "mcnemar_p",
    "worse_p",
    "relative_change",
    "ShadowVerdict",
    "judge_shadow",
    "judge_paired",
    "StageVerdict",
    "judge_stage",
    "canary_emergency",
    "RolloutState",
]


def _stats() -> Any:
    # Imported on first use: scipy.stats adds ~70 MB to every worker that merely imports
    # the task modules (ingest workers never judge a rollout).
    from scipy import stats

    return stats


class Phase(str, enum.Enum):
    SHADOW = "shadow"
    CANARY = "canary"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    INCONCLUSIVE = "inconclusive"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    @property
    def is_final(self) -> bool:
        return self not in (Phase.SHADOW, Phase.CANARY)


# ---------------------------------------------------------------------- statistics
@dataclass(frozen=True, slots=True)
class PairedCounts:
    """Candidate and production scored on the same labelled rows.

    ``candidate`` and ``production`` hold each model's confusion counts and strategy
    returns (long on 1, short on 0); ``candidate_only`` counts rows only the
    candidate got right, ``production_only`` rows only production got right.
    """

    candidate: Counts = Counts()
    production: Counts = Counts()
    candidate_only: int = 0
    production_only: int = 0

    @classmethod
    def from_arrays(cls, y: Any, candidate_pred: Any, production_pred: Any, ret: Any = None) -> PairedCounts:
        y = np.asarray(y).astype(np.int8, copy=False).ravel()
        c = np.asarray(candidate_pred).astype(np.int8, copy=False).ravel()
        p = np.asarray(production_pred).astype(np.int8, copy=False).ravel()
        if not (y.shape == c.shape == p.shape):
            raise ValueError(f"y, candidate and production predictions differ in length: {y.size}, {c.size}, {p.size}")
        if ret is None:
            r = np.zeros(y.size)
        else:
            r = np.nan_to_num(np.asarray(ret, dtype=np.float64).ravel())
        c_hit, p_hit = c == y, p == y
        return cls(
            Counts.from_arrays(y, c, np.where(c == 1, r, -r)),
            Counts.from_arrays(y, p, np.where(p == 1, r, -r)),
            int(np.count_nonzero(c_hit & ~p_hit)),
            int(np.count_nonzero(p_hit & ~c_hit)),
        )

    @property
    def n(self) -> int:
        return self.candidate.n

    def __add__(self, other: PairedCounts) -> PairedCounts:
        if not isinstance(other, PairedCounts):
            return NotImplemented
        return PairedCounts(self.candidate + other.candidate, self.production + other.production,
                            self.candidate_only + other.candidate_only, self.production_only + other.production_only)

    def accuracy_difference_bounds(self, confidence: float) -> tuple[float, float]:
        """Two one-sided bounds (each at ``confidence``) of candidate minus production accuracy."""
        n = self.n
        if n == 0:
            return (-1.0, 1.0)
        b, c = self.candidate_only, self.production_only
        diff = (b - c) / n
        # Paired difference of proportions: var = (b + c - (b - c)^2 / n) / n^2.
        se = math.sqrt(max(0.0, b + c - (b - c) ** 2 / n)) / n
        z = float(_stats().norm.ppf(confidence))
        return diff - z * se, diff + z * se

    def to_json(self) -> dict[str, Any]:
        return {"candidate": self.candidate.to_json(), "production": self.production.to_json(),
                "candidate_only": self.candidate_only, "production_only": self.production_only}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> PairedCounts:
        if not d:
            return cls()
        return cls(Counts.from_json(d["candidate"]), Counts.from_json(d["production"]),
                   int(d["candidate_only"]), int(d["production_only"]))


def mcnemar_p(better: int, worse: int, *, mid_p: bool = True) -> float:
    """One-sided McNemar p-value that a model is more often right than the other.

    ``better`` counts pairs only this model got right, ``worse`` pairs only the other
    got right. Under the null each discordant pair goes either way with probability
    1/2, so the p-value is the binomial upper tail at ``better`` (mid-p: half the
    point mass at ``better`` itself).

    >>> mcnemar_p(0, 0)
    1.0
    >>> mcnemar_p(30, 10) < 0.01 < mcnemar_p(10, 30)
    True
    """
    n = int(better) + int(worse)
    if n == 0:
        return 1.0
    tail = float(_stats().binom.sf(better, n, 0.5))  # P(X > better)
    point = float(_stats().binom.pmf(better, n, 0.5))
    return min(1.0, tail + (0.5 * point if mid_p else point))


def worse_p(canary: Counts, production: Counts, metric: str = "accuracy") -> float:
    """One-sided p-value that the canary is worse than production (independent samples).

    Sharpe ratio: Welch's t on the mean strategy return. Any other metric: Fisher's
    exact test that the canary's hit rate is lower (precision, recall and F1 are
    judged through the hit rate: the counts per version carry no pairing).
    """
    if canary.n == 0 or production.n == 0:
        return 1.0
    if metric == "sharpe":
        if canary.n < 2 or production.n < 2:
            return 1.0
        vc, vp = canary.std_return ** 2, production.std_return ** 2
        se2 = vc / canary.n + vp / production.n
        if not se2 > 0:
            return 1.0
        t = (canary.mean_return - production.mean_return) / math.sqrt(se2)
        df = se2 ** 2 / ((vc / canary.n) ** 2 / (canary.n - 1)
                         + (vp / production.n) ** 2 / (production.n - 1) or 1e-300)
        return float(_stats().t.cdf(t, df))
    table = [[canary.hits, canary.n - canary.hits], [production.hits, production.n - production.hits]]
    return float(_stats().fisher_exact(table, alternative="less").pvalue)


def relative_change(new: float, old: float) -> float:
    """``(new - old) / |old|``; nan when either is undefined or ``old`` is 0."""
    if new is None or old is None or not (math.isfinite(new) and math.isfinite(old)) or old == 0:
        return float("nan")
    return (new - old) / abs(old)


def _r(x: float, nd: int = 6) -> float | None:
    return round(float(x), nd) if x is not None and math.isfinite(float(x)) else None


# ---------------------------------------------------------------------- shadow
@dataclass(frozen=True)
class ShadowVerdict:
    """What shadow concluded: ``wait``, ``gate`` (passed, waiting for a person), ``pass``, ``reject`` or
    ``inconclusive``; with the reason, the figures and what is still needed."""

    action: str
    reason: str
    figures: dict[str, Any]
    needs: tuple[str, ...] = ()


def judge_shadow(paired: PairedCounts, elapsed: timedelta, settings: Any, *, metric: str = "accuracy",
                 manual_gate: bool = False, confirmed: bool = False, min_rows: int | None = None) -> ShadowVerdict:
    """Judge a shadow from its paired counts; ``settings`` is a ``ValidationSettings``.

    The rows it waits for are ``settings.shadow_min_rows`` when set, else ``min_rows``: what
    the paired test needs (:func:`retrain.core.evidence.paired_rows_needed`, planned at training).
    """
    alpha = 1.0 - settings.confidence
    need_rows = settings.shadow_min_rows if settings.shadow_min_rows is not None else int(min_rows or 0)
    hours = elapsed.total_seconds() / 3600.0
    cand, prod = paired.candidate.metric(metric), paired.production.metric(metric)
    rel = relative_change(cand, prod)
    p_better = mcnemar_p(paired.candidate_only, paired.production_only)
    p_worse = mcnemar_p(paired.production_only, paired.candidate_only)
    lo, hi = paired.accuracy_difference_bounds(settings.confidence)
    prod_acc = paired.production.accuracy
    rel_hi = hi / prod_acc if paired.n and prod_acc > 0 else float("inf")
    figures = {
        "metric": metric, "rows": paired.n, "hours": round(hours, 4),
        "candidate": _r(cand), "production": _r(prod), "relative": _r(rel),
        "candidate_only": paired.candidate_only, "production_only": paired.production_only,
        "p_better": _r(p_better, 8), "p_worse": _r(p_worse, 8), "alpha": round(alpha, 6),
        "accuracy_diff_bounds": [_r(lo), _r(hi)], "min_improvement": settings.min_improvement,
    }
    summary = (f"{metric} {_fmt(cand)} vs production {_fmt(prod)} ({_pct(rel)}) on {paired.n} paired live rows, "
               f"{paired.candidate_only} rows only the candidate got right vs {paired.production_only}; "
               f"McNemar p {p_better:.3g} (better), {p_worse:.3g} (worse) at alpha {alpha:.3g}; {hours:.1f} h")
    needs: list[str] = []
    if hours < settings.shadow_min_hours:
        needs.append(f"{settings.shadow_min_hours - hours:.1f} h more (minimum {settings.shadow_min_hours:g} h)")
    figures["rows_needed"] = need_rows
    if paired.n < need_rows:
        needs.append(f"{need_rows - paired.n} more labelled rows (minimum {need_rows})")
    if not needs:
        if math.isfinite(rel) and rel >= settings.min_improvement and p_better <= alpha:
            if manual_gate and not confirmed:
                return ShadowVerdict("gate", f"passed, waiting for confirmation: {summary}", figures,
                                     ("confirmation: retrain promote MODEL --confirm",))
            return ShadowVerdict("pass", f"passed: {summary}", figures)
        if p_worse <= alpha:
            return ShadowVerdict("reject", f"worse than production: {summary}", figures)
        if metric == "accuracy" and rel_hi < settings.min_improvement:
            return ShadowVerdict(
                "reject", f"cannot reach +{settings.min_improvement:.0%}: the upper bound of its improvement is "
                f"{_pct(rel_hi)}; {summary}", figures)
        if not (math.isfinite(rel) and rel >= settings.min_improvement):
            needs.append(f"an improvement of at least +{settings.min_improvement:.0%} (now {_pct(rel)})")
        if p_better > alpha:
            needs.append(f"McNemar p <= {alpha:.3g} (now {p_better:.3g}): more rows")
    if hours >= settings.shadow_max_hours:
        return ShadowVerdict("inconclusive", f"inconclusive after {hours:.1f} h (maximum "
                             f"{settings.shadow_max_hours:g} h): {summary}", figures, tuple(needs))
    return ShadowVerdict("wait", f"in shadow: {summary}", figures, tuple(needs))


def judge_paired(paired: PairedCounts, *, metric: str, min_improvement: float, confidence: float,
                 rows_needed: int = 0, final: bool) -> tuple[str, str]:
    """An offline paired comparison (holdout or walk-forward): ``pass``, ``reject`` or ``screen``.

    ``pass`` when the candidate is better by ``min_improvement`` (relative) and a one-sided
    McNemar test says it is more often right at ``confidence``. Otherwise, a ``final`` gate
    (walk-forward: no live test follows) rejects; a screen (holdout before a live gate)
    rejects only what it can show: a candidate significantly worse, or (with at least
    ``rows_needed`` rows, enough for the test) one below the improvement. Otherwise it is
    ``screen``: passed on to the live gate, which has the rows to decide.
    """
    alpha = 1.0 - confidence
    cand, prod = paired.candidate.metric(metric), paired.production.metric(metric)
    rel = relative_change(cand, prod)
    p_better = mcnemar_p(paired.candidate_only, paired.production_only)
    p_worse = mcnemar_p(paired.production_only, paired.candidate_only)
    summary = (f"{metric} {_fmt(cand)} vs production {_fmt(prod)} ({_pct(rel)}) on {paired.n} paired rows, "
               f"{paired.candidate_only} only the candidate got right vs {paired.production_only}; McNemar p "
               f"{p_better:.3g} (better), {p_worse:.3g} (worse) at alpha {alpha:.3g}")
    improved = math.isfinite(rel) and rel >= min_improvement
    if improved and p_better <= alpha:
        return "pass", f"better: {summary}"
    if final:
        why = "not better by enough" if not improved else "not significantly better"
        return "reject", f"{why} (needs +{min_improvement:.0%} at p <= {alpha:.3g}): {summary}"
    if p_worse <= alpha:
        return "reject", f"worse than production: {summary}"
    if paired.n >= rows_needed and not improved:
        return "reject", (f"below +{min_improvement:.0%} on {paired.n} rows, enough for the test ({rows_needed}): "
                          f"{summary}")
    if improved:
        return "screen", f"better, not yet significant: {summary}"
    return "screen", (f"{paired.n} rows cannot show +{min_improvement:.0%} (the test needs {rows_needed:,}) and do "
                      f"not show it worse: {summary}")


# ---------------------------------------------------------------------- canary stages
@dataclass(frozen=True)
class StageVerdict:
    """What a canary stage concluded: ``wait``, ``hold``, ``gate``, ``advance``, ``complete``, ``rollback``
    or ``stall``; with the reason, the figures and what is still needed for the next step."""

    action: str
    reason: str
    figures: dict[str, Any]
    needs: tuple[str, ...] = ()


def judge_stage(canary: Counts, production: Counts, *, share: float, stage: int, n_stages: int,
                elapsed: timedelta, settings: Any, confidence: float, metric: str = "accuracy",
                emergency: TriggerFiring | None = None, confirmed: bool = False, power: float = 0.8) -> StageVerdict:
    """Judge one canary stage; ``settings`` is a ``RolloutSettings``. Without ``stage_min_samples``
    a stage waits for the outcomes a one-sided test needs to see a ``rollback_degradation`` drop
    from production's level at ``confidence`` and ``power``."""
    alpha = 1.0 - confidence
    minutes = elapsed.total_seconds() / 60.0
    c_m, p_m = canary.metric(metric), production.metric(metric)
    rel = relative_change(c_m, p_m)
    p_worse = worse_p(canary, production, metric)
    degraded = math.isfinite(rel) and -rel >= settings.rollback_degradation
    figures = {
        "metric": metric, "share_pct": share, "stage": stage + 1, "stages": n_stages, "minutes": round(minutes, 3),
        "canary": _r(c_m), "canary_n": canary.n, "production": _r(p_m), "production_n": production.n,
        "relative": _r(rel), "p_worse": _r(p_worse, 8), "alpha": round(alpha, 6),
        "rollback_degradation": settings.rollback_degradation,
    }
    summary = (f"canary {metric} {_fmt(c_m)} on {canary.n} labelled outcomes vs production {_fmt(p_m)} on "
               f"{production.n} ({_pct(rel)}), p(worse) {p_worse:.3g}; {minutes:.0f} min at {share:g}%")
    if emergency is not None:
        figures["emergency"] = {"reason": emergency.reason,
                                "severity": emergency.severity.value if emergency.severity else None}
        return StageVerdict("rollback", f"emergency on the canary: {emergency.reason} ({summary})", figures)
    if degraded and p_worse <= alpha:
        return StageVerdict("rollback", f"canary worse than production by {-rel:.1%} (limit "
                            f"{settings.rollback_degradation:.0%}) at p {p_worse:.3g} <= {alpha:.3g}: {summary}",
                            figures)
    needs: list[str] = []
    min_samples = settings.stage_min_samples
    if min_samples is None:
        from retrain.core.evidence import independent_rows_needed

        level = production.accuracy if production.n >= 30 else 0.5
        min_samples = independent_rows_needed(level, settings.rollback_degradation, confidence=confidence,
                                              power=power)
    figures["min_samples"] = min_samples
    if minutes < settings.stage_min_minutes:
        needs.append(f"{settings.stage_min_minutes - minutes:.0f} min more "
                     f"(minimum {settings.stage_min_minutes:g} min)")
    if canary.n < min_samples:
        needs.append(f"{min_samples - canary.n} more labelled canary outcomes (minimum {min_samples})")
    if degraded:
        needs.append(f"evidence: the canary looks {-rel:.1%} worse, p(worse) {p_worse:.3g} > {alpha:.3g}")
    if needs:
        if minutes >= settings.stage_max_minutes:
            return StageVerdict("stall", f"stage {stage + 1} did not gather its evidence in "
                                f"{settings.stage_max_minutes:g} min: {summary}", figures, tuple(needs))
        return StageVerdict("hold" if degraded else "wait", summary, figures, tuple(needs))
    if stage + 1 >= n_stages:
        return StageVerdict("complete", f"last stage passed: {summary}", figures)
    if settings.manual_gate and not confirmed:
        return StageVerdict("gate", f"stage {stage + 1} passed, waiting for confirmation: {summary}", figures,
                            ("confirmation: retrain promote MODEL --confirm",))
    return StageVerdict("advance", f"stage {stage + 1} passed: {summary}", figures)


def canary_emergency(production: Sequence[tuple[datetime, Counts]], canary: Sequence[tuple[datetime, Counts]],
                     now: datetime, cfg: EmergencyConfig) -> TriggerFiring | None:
    """The emergency detector with production's recent buckets as the canary's history.

    The canary is too young to have a history of its own; production, serving the
    same market at the same minutes, is the fairer reference. Minute buckets are
    grouped into ``cfg.bucket_minutes`` buckets ending at ``now``; the canary's
    ``cfg.consecutive`` newest non-empty buckets are judged against production's.
    """
    width = timedelta(minutes=cfg.bucket_minutes)
    k_max = cfg.history_buckets + cfg.consecutive

    def grouped(rows: Sequence[tuple[datetime, Counts]]) -> list[Counts]:
        out = [Counts() for _ in range(k_max)]
        for start, c in rows:
            age = now - start
            if age >= timedelta(0):
                k = int(age // width)
                if k < k_max:
                    out[k] = out[k] + c
        out.reverse()  # oldest first
        return out

    prod, can = grouped(production), grouped(canary)
    if can[-1].n == 0:
        return None
    history = [c for c in prod if c.n > 0]
    recent = [c for c in can[-cfg.consecutive:] if c.n > 0]
    best = None
    for metric in ("accuracy", "mean_return"):
        firing = detect_emergency(history, recent, replace(cfg, metric=metric))
        if firing is not None and (best is None or _severity_rank(firing) > _severity_rank(best)):
            best = firing
    return best


def _severity_rank(f: TriggerFiring) -> int:
    order = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
    return order.index(f.severity.value) if f.severity else -1


# ---------------------------------------------------------------------- state machine
_TRANSITIONS: dict[tuple[Phase, str], Phase] = {
    (Phase.SHADOW, "pass"): Phase.CANARY,
    (Phase.SHADOW, "reject"): Phase.REJECTED,
    (Phase.SHADOW, "inconclusive"): Phase.INCONCLUSIVE,
    (Phase.SHADOW, "abort"): Phase.ABORTED,
    (Phase.CANARY, "advance"): Phase.CANARY,
    (Phase.CANARY, "complete"): Phase.PROMOTED,
    (Phase.CANARY, "rollback"): Phase.ROLLED_BACK,
    (Phase.CANARY, "stall"): Phase.INCONCLUSIVE,
    (Phase.CANARY, "abort"): Phase.ABORTED,
}
_STAY = frozenset({"wait", "hold", "gate"})


@dataclass(frozen=True)
class RolloutState:
    """Where a candidate is: shadow, a canary stage (index into ``stages``), or a final outcome.

    >>> from datetime import datetime, timezone
    >>> t = datetime(2026, 1, 5, tzinfo=timezone.utc)
    >>> s = RolloutState.begin((10.0, 50.0, 100.0), t)
    >>> s.phase.value, s.share_pct
    ('shadow', 0.0)
    >>> s = s.next("pass", t).next("advance", t)
    >>> s.phase.value, s.stage, s.share_pct
    ('canary', 1, 50.0)
    >>> s.next("rollback", t).share_pct
    0.0
    """

    phase: Phase
    stages: tuple[float, ...]
    stage: int
    started_at: datetime
    stage_started_at: datetime
    finished_at: datetime | None = None

    @classmethod
    def begin(cls, stages: Sequence[float], now: datetime, *, shadow: bool = True) -> RolloutState:
        stages = tuple(float(s) for s in stages)
        if not stages or stages[-1] != 100.0:
            raise ValueError(f"stages must end at 100, got {list(stages)}")
        return cls(Phase.SHADOW if shadow else Phase.CANARY, stages, -1 if shadow else 0, now, now)

    @property
    def share_pct(self) -> float:
        return self.stages[self.stage] if self.phase is Phase.CANARY else 0.0

    @property
    def is_final(self) -> bool:
        return self.phase.is_final

    def next(self, action: str, now: datetime) -> RolloutState:
        """The state after ``action``; staying actions return ``self``; an impossible move raises."""
        if action in _STAY:
            return self
        target = _TRANSITIONS.get((self.phase, action))
        if target is None:
            raise ValueError(f"no transition {action!r} from {self.phase.value}")
        if action == "advance" and self.stage + 1 >= len(self.stages):
            raise ValueError(f"no stage after {self.stages[self.stage]:g}%: complete instead")
        if action == "complete" and self.stage + 1 < len(self.stages):
            raise ValueError(f"cannot complete at stage {self.stage + 1} of {len(self.stages)}")
        if target is Phase.CANARY:
            stage = 0 if self.phase is Phase.SHADOW else self.stage + 1
            return replace(self, phase=target, stage=stage, stage_started_at=now)
        return replace(self, phase=target, finished_at=now)


def _fmt(x: float) -> str:
    return f"{x:.4f}" if x is not None and math.isfinite(x) else "n/a"


def _pct(x: float) -> str:
    return f"{x:+.1%}" if x is not None and math.isfinite(x) else "n/a"
