"""When production goes back to ``previous`` on its own (issue 14, "emergencies act").

Two rules, each a pure function of counts, levels, durations and settings (no I/O,
no clock: the caller passes ``now``). The sweep (:mod:`retrain.steps.sweep`) applies
them and moves the aliases.

**On an emergency** (:func:`judge_previous`). Production is collapsing and a
retraining is on its way; meanwhile, if the rollback target ``previous`` scored
better than production does now, serve it again. Production's side is always its live
primary metric over the recent window (the performance trigger's
``thresholds.window_minutes``, 4 h by default); ``previous``'s side is the first of
these references with at least ``min_samples`` outcomes, like with like as far as the
data allows:

* ``recent``: its own live outcomes in that window (it served it, e.g. until a promotion
  an hour ago), with the two-sample one-sided test of the canary
  (:func:`retrain.core.rollout.worse_p`: Fisher on hits and misses, Welch on returns);
* ``service``: its live outcomes from its last service before it was replaced (the
  caller passes them: the same span the post-promotion watch reads, the rollout that
  replaced it or the ``thresholds.window_minutes`` before the promotion that did), its
  live level then standing in for what it would do now, with the same two-sample test
  that production now is worse than ``previous`` was then;
* ``holdout``: otherwise its validated level (the holdout ``baseline`` in its version
  metrics), with the one-sample test of :func:`level_worse_p`. A holdout score usually
  runs higher than a live one, which is why it is only the last resort.

It rolls back when ``previous`` is better (point estimates) *and* the test says
production is worse at ``confidence``; never on fewer than ``min_samples`` outcomes
of production, and never when ``previous`` has neither live data nor a baseline. The
figures name the reference (``reference``, ``reference_n``; the caller adds its span).
The sweep also never goes back to a ``previous`` that was itself rolled back from (status
``rolled_back``: found worse than what serves now), and does it at most once per
emergency episode, so two versions cannot take turns.

**After a full promotion** (:func:`judge_watch`). For ``watch_hours`` after a version
became production through a promotion, its live primary metric since the promotion is
compared with the level of the version it replaced, like with like:

* its *live* level as it served just before the promotion, when it has at least
  ``min_samples`` labelled outcomes there (the caller passes them: production's outcomes
  during the rollout that ended in the promotion, or over the ``thresholds.window_minutes``
  before it), with the two-sample one-sided test of the canary (:func:`worse_p`: Fisher on
  hits and misses, Welch on returns); figures ``reference: "live"``;
* otherwise its validated level (its holdout ``baseline``), with the one-sample test of
  :func:`level_worse_p`; figures ``reference: "holdout"``. A holdout score usually runs
  higher than a live one, which is why it is only the fallback.

``rollback`` when it is at least ``watch_degradation`` (relative, 10 %) below that level
*and* the test rejects "as good" at ``confidence``; ``hold`` while it looks that much
worse without the evidence; ``watch`` otherwise; ``ended`` after the period.

>>> from datetime import datetime, timedelta, timezone
>>> t = datetime(2026, 1, 5, tzinfo=timezone.utc)
>>> live = Counts(n=2000, tp=500, tn=500, fp=500, fn=500)          # accuracy 0.50
>>> v = judge_watch(live, {"accuracy": 0.60}, promoted_at=t, now=t + timedelta(hours=5), watch_hours=72,
...                 degradation=0.10, confidence=0.95, min_samples=500)
>>> v.action, v.figures["reference"], v.figures["relative"]
('rollback', 'holdout', -0.166667)
>>> before = Counts(n=2000, tp=520, tn=520, fp=480, fn=480)        # it served at 0.52 before
>>> v = judge_watch(live, {"accuracy": 0.60}, promoted_at=t, now=t + timedelta(hours=5), watch_hours=72,
...                 degradation=0.10, confidence=0.95, min_samples=500, predecessor_live=before)
>>> v.action, v.figures["reference"], v.figures["reference_n"], v.figures["predecessor"]
('watch', 'live', 2000, 0.52)
>>> judge_watch(live, {"accuracy": 0.60}, promoted_at=t, now=t + timedelta(hours=73), watch_hours=72,
...             degradation=0.10, confidence=0.95, min_samples=500).action
'ended'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from retrain.core.rollout import relative_change, worse_p
from retrain.core.windows import Counts

__all__ = ["level_worse_p", "BackVerdict", "judge_previous", "judge_watch"]


def _stats() -> Any:
    from scipy import stats  # on first use: see retrain.core.rollout

    return stats


def level_worse_p(live: Counts, level: float | None, metric: str = "accuracy") -> float:
    """One-sided p-value that the live ``metric`` is below a fixed ``level`` (H0: it is at least ``level``).

    Accuracy, precision and recall are proportions: the exact binomial lower tail of the
    hits on their own denominators (all outcomes, predicted positives, actual
    positives). F1: a normal approximation with the delta-method standard error of
    ``2tp / (2tp + fp + fn)`` under multinomial counts. Sharpe: a normal approximation
    with Lo's standard error ``sqrt((1 + S^2 / 2) / n)`` of a per-outcome Sharpe ratio.
    1.0 when there is nothing to test.

    >>> round(level_worse_p(Counts(n=100, tp=25, tn=25, fp=25, fn=25), 0.60), 4)
    0.0271
    >>> level_worse_p(Counts(), 0.60)
    1.0
    """
    if live.n == 0 or level is None or not math.isfinite(float(level)):
        return 1.0
    level = float(level)
    st = _stats()
    if metric in ("accuracy", "precision", "recall"):
        k, n = {"accuracy": (live.hits, live.n), "precision": (live.tp, live.tp + live.fp),
                "recall": (live.tp, live.tp + live.fn)}[metric]
        if n == 0:
            return 1.0
        return float(st.binom.cdf(k, n, min(max(level, 0.0), 1.0)))
    if metric == "f1":
        n = live.n
        a, bc = live.tp / n, (live.fp + live.fn) / n
        d = 2 * a + bc
        if d == 0:
            return 1.0
        f = 2 * a / d
        ga, gbc = 2 * bc / d ** 2, -2 * a / d ** 2
        mean = ga * a + gbc * bc
        var = (ga * ga * a + gbc * gbc * bc - mean * mean) / n
        if not var > 0:
            return 0.0 if f < level else 1.0
        return float(st.norm.cdf((f - level) / math.sqrt(var)))
    if metric == "sharpe":
        s = live.sharpe
        if live.n < 2 or not math.isfinite(s):
            return 1.0
        return float(st.norm.cdf((s - level) / math.sqrt((1.0 + s * s / 2.0) / live.n)))
    raise ValueError(f"unknown metric {metric!r}")


@dataclass(frozen=True)
class BackVerdict:
    """Whether production goes back: ``action`` (``rollback`` or a staying word), the reason, the figures."""

    action: str
    reason: str
    figures: dict[str, Any]

    @property
    def rollback(self) -> bool:
        return self.action == "rollback"


def _r(x: float | None, nd: int = 6) -> float | None:
    return round(float(x), nd) if x is not None and math.isfinite(float(x)) else None


def _fmt(x: float | None) -> str:
    return f"{x:.4f}" if x is not None and math.isfinite(x) else "n/a"


def judge_previous(production: Counts, previous_live: Counts, previous_baseline: dict[str, float] | None, *,
                   metric: str = "accuracy", confidence: float = 0.95, min_samples: int = 1,
                   previous_service: Counts | None = None, service_span: str = "before it was replaced",
                   holdout_n: int | None = None) -> BackVerdict:
    """On an emergency: should production go back to ``previous``? See the module docstring for the rule.

    ``production`` and ``previous_live`` are each version's labelled outcomes in the
    recent window; ``previous_service`` is ``previous``'s labelled outcomes from its last
    service before it was replaced (described in the reason as served ``service_span``);
    ``previous_baseline`` is ``previous``'s validated metrics (or None), measured on
    ``holdout_n`` rows when known.

    >>> live = Counts(n=2400, tp=600, tn=590, fp=610, fn=600)              # production now: 0.4958
    >>> then = Counts(n=9000, tp=2200, tn=2210, fp=2290, fn=2300)          # previous served at 0.49
    >>> v = judge_previous(live, Counts(), {"accuracy": 0.6275}, previous_service=then, min_samples=500)
    >>> v.action, v.figures["reference"], v.figures["reference_n"], v.figures["previous"]
    ('stay', 'service', 9000, 0.49)
    >>> judge_previous(live, Counts(), {"accuracy": 0.6275}, min_samples=500).figures["reference"]
    'holdout'
    """
    alpha = 1.0 - confidence
    prod = production.metric(metric)
    service = previous_service if previous_service is not None else Counts()
    figures: dict[str, Any] = {"metric": metric, "production": _r(prod), "production_n": production.n,
                               "recent_n": previous_live.n, "service_n": service.n, "alpha": round(alpha, 6),
                               "min_samples": min_samples}
    if production.n < min_samples:
        return BackVerdict("stay", f"production has {production.n} labelled outcomes in the window "
                           f"(minimum {min_samples}): nothing to compare",
                           {**figures, "reference": None, "reference_n": None})
    recent = previous_live.metric(metric) if previous_live.n >= min_samples else float("nan")
    then = service.metric(metric) if service.n >= min_samples else float("nan")
    n: int | None
    if math.isfinite(recent):
        reference, prev, n = "recent", recent, previous_live.n
        p = worse_p(production, previous_live, metric)
        what = f"previous's live {metric} {_fmt(prev)} on {n} outcomes in the window"
    elif math.isfinite(then):
        reference, prev, n = "service", then, service.n
        p = worse_p(production, service, metric)
        what = (f"previous's live {metric} {_fmt(prev)} on {n} outcomes {service_span}, "
                f"{previous_live.n} in the window")
    else:
        level = (previous_baseline or {}).get(metric)
        if level is None:
            return BackVerdict("stay", f"previous has {previous_live.n} live outcomes in the window, {service.n} "
                               f"{service_span} (minimum {min_samples}) and no validated {metric}: nothing to "
                               f"compare", {**figures, "reference": None, "reference_n": None})
        reference, prev, n = "holdout", float(level), holdout_n
        p = level_worse_p(production, prev, metric)
        what = (f"previous's validated (holdout) {metric} {_fmt(prev)} (it has {previous_live.n} live outcomes "
                f"in the window, {service.n} {service_span}, minimum {min_samples})")
    rel = relative_change(prod, prev)
    figures.update(reference=reference, reference_n=n, previous=_r(prev), relative=_r(rel), p_worse=_r(p, 8))
    summary = (f"production's live {metric} {_fmt(prod)} on {production.n} outcomes vs {what}, "
               f"p(production worse) {p:.3g} at alpha {alpha:.3g}")
    better = math.isfinite(prev) and math.isfinite(prod) and prev > prod
    if better and p <= alpha:
        return BackVerdict("rollback", f"previous scored better: {summary}", figures)
    return BackVerdict("stay", f"previous {'not significantly ' if better else 'not '}better: {summary}", figures)


def judge_watch(production: Counts, predecessor_baseline: dict[str, float] | None, *, promoted_at: datetime,
                now: datetime, watch_hours: float, degradation: float, confidence: float, metric: str = "accuracy",
                min_samples: int = 1, predecessor_live: Counts | None = None,
                live_span: str = "before its promotion") -> BackVerdict:
    """After a full promotion: ``rollback``, ``hold``, ``watch``, ``ended`` or ``off``. See the module docstring.

    ``production`` is its labelled outcomes since ``promoted_at``; ``predecessor_live``
    the labelled outcomes of the version it replaced as it served just before (None or
    fewer than ``min_samples``: its holdout level is the reference instead), described
    in the reason as served ``live_span``; ``predecessor_baseline`` that version's
    validated metrics.
    """
    alpha = 1.0 - confidence
    hours = (now - promoted_at).total_seconds() / 3600.0
    before = predecessor_live if predecessor_live is not None else Counts()
    figures: dict[str, Any] = {"metric": metric, "hours": round(hours, 4), "watch_hours": watch_hours,
                               "watch_degradation": degradation, "alpha": round(alpha, 6), "production_n": production.n,
                               "min_samples": min_samples}
    if watch_hours <= 0:
        return BackVerdict("off", "no post-promotion watch (rollout.watch_hours = 0)", figures)
    if hours > watch_hours:
        return BackVerdict("ended", f"watched {watch_hours:g} h after its promotion", figures)
    live = production.metric(metric)
    level_live = before.metric(metric) if before.n >= min_samples else float("nan")
    if math.isfinite(level_live):
        reference, level = "live", level_live
        p = worse_p(production, before, metric)
        what = f"the live {_fmt(level)} of the version it replaced on {before.n} outcomes {live_span}"
    else:
        holdout = (predecessor_baseline or {}).get(metric)
        if holdout is None:
            return BackVerdict("watch", f"the version it replaced has {before.n} live outcomes {live_span} "
                               f"(minimum {min_samples}) and no validated {metric}: nothing to compare",
                               {**figures, "reference": None, "reference_n": before.n})
        reference, level = "holdout", float(holdout)
        p = level_worse_p(production, level, metric)
        what = (f"the validated (holdout) {_fmt(level)} of the version it replaced "
                f"(it has {before.n} live outcomes {live_span}, minimum {min_samples})")
    rel = relative_change(live, level)
    figures.update(reference=reference, reference_n=before.n, production=_r(live), predecessor=_r(level),
                   relative=_r(rel), p_worse=_r(p, 8))
    summary = (f"live {metric} {_fmt(live)} on {production.n} outcomes since its promotion {hours:.1f} h ago vs "
               f"{what} ({'n/a' if not math.isfinite(rel) else f'{rel:+.1%}'}), p(worse) {p:.3g} at alpha {alpha:.3g}")
    if production.n < min_samples:
        return BackVerdict("watch", f"{summary}; {min_samples - production.n} more outcomes needed", figures)
    degraded = math.isfinite(rel) and -rel >= degradation - 1e-9  # 0.45 vs 0.50 is 10 %, not 9.99...%
    if degraded and p <= alpha:
        return BackVerdict("rollback", f"{-rel:.1%} worse than the version it replaced (limit {degradation:.0%}) "
                           f"within {watch_hours:g} h of its promotion: {summary}", figures)
    if degraded:
        return BackVerdict("hold", f"looks {-rel:.1%} worse, not yet significant: {summary}", figures)
    return BackVerdict("watch", summary, figures)
