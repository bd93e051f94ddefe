"""The performance trigger (ADAPT-009): has the model got worse than its baseline?

Two rules, either of which fires; both need evidence, so that noise alone
rarely fires them.

**Relative drop** of the configured metric (default: accuracy) by
``relative_drop`` (default 5 %) against the version's validated baseline.
Accuracy, precision, recall and F1 are all proportions of Bernoulli trials:
accuracy counts hits among all outcomes, precision true positives among
positive predictions, recall true positives among actual positives, and F1 is
``2J / (1 + J)`` of the proportion ``J = tp / (tp + fp + fn)``, so a drop of F1
is a drop of ``J``. Each is watched by a one-sided Bernoulli CUSUM of the
log-likelihood ratio of ``p1`` (the degraded rate) against ``p0`` (the
baseline), bucket by bucket::

    S = max(0, S + k * log(p1 / p0) + (n - k) * log((1 - p1) / (1 - p0)))

for a bucket of ``k`` successes in ``n`` trials, firing when ``S >= h``. A
single chart tuned to a 5 % drop is slow to see a large drop, so a small bank
of charts runs side by side, at ``relative_drop`` times ``drop_multiples``
(default 1, 2, 4: 5 %, 10 %, 20 %). The rule fires when any chart crosses.

*False-alarm rate.* Each chart's ``h`` is computed, not guessed: the average
run length (ARL, outcomes between false alarms while the model holds its
baseline) of a Bernoulli CUSUM is solved exactly on the chart's Markov chain
(steps rounded to a common rational lattice, a banded linear system of a few
thousand states, cached), and ``h`` is the smallest threshold whose ARL
reaches ``arl0 * len(charts)``, solved at baselines on a 0.01 grid (the larger
``h`` of the two grid points around the baseline: never a lower ARL). False-alarm rates of the charts add at most,
so the bank's ARL is at least ``arl0`` (default 10,000,000 relevant outcomes:
at a steady 10 outcomes/s, one false alarm in 11.6 days; ``h`` grows only with
the logarithm of ``arl0``, so raise it with the outcome rate). Verified by
simulation in the unit tests and against River's ADWIN in
``retrain.benchmarks.detection`` (30 seeds x 100,000 stable outcomes: no false
alarm; median delay about 410 outcomes for 0.60 -> 0.50, ADWIN 480). With
baseline 0.60 and the defaults ``h`` is 11.1, 12.6 and 13.5 nats, and the mean
delay of the fastest chart, started from 0, is about 5,300 outcomes for a drop
to 0.57 (5 %), 1,500 to 0.54 and 620 to 0.50. A 5 % drop of accuracy is a
small signal: no rule can see it in a few hundred outcomes without firing on
noise too.

*Buckets.* Evaluated over per-bucket counts, ``S`` is clipped at 0 only at
bucket boundaries, which can only lower it: a bucketed run fires no more
often than the per-outcome chart above. :func:`evaluate_performance` starts
from ``S = 0`` at the first bucket it is given, so the sweep can recompute it
from the last W buckets without keeping state; it fires when ``S`` is above
``h`` at the last bucket.

*Sliding windows: the false-alarm rule of the sweep.* The sweep recomputes
every chart from 0 over the last ``window_minutes`` at each run and fires when
a chart stands at or above ``h`` at the last bucket. That chart is never above
the one that has run since the model went live, and a chart of log-likelihood
ratios that holds ``p0`` has ``E[exp(step)] = 1``, so by Lundberg's
inequality it stands at or above ``h`` with probability at most ``exp(-h)``
at any moment. Hence the rule: **a sweep of a model that holds its baseline
fires with probability at most the sum of exp(-h) over the charts**, whatever
the outcome rate and the window length: 2.1e-5 with the defaults at baseline
0.60 (h = 11.05, 12.61, 13.5), i.e. at one sweep a minute at most one false
request in 34 days; a model doing better than its baseline fires less. Raise
``arl0`` to lower it (``h`` grows with its logarithm). Checked on stable
streams swept every minute in ``tests/unit/test_sweep_false_alarms.py``.

**Accuracy floor**: accuracy below ``floor`` (default 0.55), tested as the
one-sided Wilson upper bound at ``confidence`` (default 0.99) over the window
being below the floor, with at least ``min_samples`` outcomes. A model truly
at 0.60 rarely fails it: the observed accuracy would have to be 3.8 standard
errors low at n = 200 (p = 7e-5 per check), 5.6 at n = 1,000 (1e-8); a model
exactly at the floor fails about 1 % of independent checks.

**Sharpe ratio** has no Bernoulli form; its rule is windowed: the upper
bound ``SR + z * sqrt((1 + SR^2 / 2) / n)`` (Lo, 2002, i.i.d. returns) is below
``baseline - relative_drop * |baseline|``, with at least ``min_samples``
outcomes. Per-trade Sharpe ratios are small, so a 5 % relative drop of one
needs far more outcomes than a drop of accuracy: expect this rule to be slow.

>>> from retrain.core.windows import Counts
>>> buckets = [Counts(n=600, tp=150, fp=150, tn=150, fn=150)] * 3  # accuracy 0.50
>>> f = evaluate_performance(buckets, {"accuracy": 0.60})
>>> f.kind.value, f.evidence["rules"]
('performance', ['relative_drop', 'floor'])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from statistics import NormalDist
from typing import Any

import numpy as np

from retrain.core.domain import Severity, TriggerKind
from retrain.core.windows import METRICS, Counts, CountWindow

__all__ = [
    "TriggerFiring",
    "PerformanceTriggerConfig",
    "evaluate_performance",
    "PerformanceDetector",
    "bernoulli_cusum_arl",
    "cusum_threshold",
    "wilson_upper",
]

_BERNOULLI_METRICS = ("accuracy", "precision", "recall", "f1")
# Baselines of exactly 0 or 1 would give infinite log-likelihood ratios.
_P_MIN, _P_MAX = 1e-3, 1 - 1e-3


@dataclass(frozen=True)
class TriggerFiring:
    """A trigger's decision to ask for a retraining, with the figures behind it.

    ``reason`` is one readable sentence; ``evidence`` is JSON-able.
    """

    kind: TriggerKind
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    severity: Severity | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "reason": self.reason,
            "evidence": self.evidence,
            "severity": self.severity.value if self.severity else None,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TriggerFiring:
        sev = d.get("severity")
        return cls(TriggerKind(d["kind"]), d["reason"], dict(d.get("evidence") or {}), Severity(sev) if sev else None)


@dataclass(frozen=True)
class PerformanceTriggerConfig:
    """Settings of the performance trigger; see the module docstring for the rules.

    Parameters
    ----------
    metric
        accuracy, precision, recall, f1 or sharpe: the metric whose relative drop fires.
    relative_drop
        Smallest drop, as a fraction of the baseline, that the trigger is built to detect.
    floor
        Accuracy below which the trigger fires whatever the baseline; None disables.
    min_samples
        Relevant outcomes needed before any rule may fire.
    arl0
        Average number of relevant outcomes between false alarms of the CUSUM bank
        when the model holds its baseline (a lower bound).
    cusum_h
        Fixed threshold in nats for every chart, instead of one derived from ``arl0``.
    drop_multiples
        The bank of charts, as multiples of ``relative_drop``.
    confidence
        One-sided confidence of the floor and Sharpe bounds.
    window
        Outcomes kept by :class:`PerformanceDetector` for the floor and Sharpe rules.
    annualisation
        Periods per year of the baseline Sharpe ratio (1 = per outcome).
    """

    metric: str = "accuracy"
    relative_drop: float = 0.05
    floor: float | None = 0.55
    min_samples: int = 200
    arl0: float = 10_000_000.0
    cusum_h: float | None = None
    drop_multiples: tuple[float, ...] = (1.0, 2.0, 4.0)
    confidence: float = 0.99
    window: int = 5_000
    annualisation: float = 1.0

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if not 0 < self.relative_drop < 1:
            raise ValueError(f"relative_drop must be in (0, 1), got {self.relative_drop}")
        if self.floor is not None and not 0 < self.floor < 1:
            raise ValueError(f"floor must be in (0, 1) or None, got {self.floor}")
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0.5, 1), got {self.confidence}")
        if self.arl0 <= 1 or self.min_samples < 1 or self.window < 1:
            raise ValueError("arl0 must be > 1 and min_samples, window >= 1")
        if not self.drop_multiples or min(self.drop_multiples) <= 0:
            raise ValueError("drop_multiples must be positive")


# ---------------------------------------------------------------------------
# Bernoulli CUSUM: run lengths and thresholds


def _steps(p0: float, p1: float) -> tuple[float, float]:
    """Log-likelihood ratio of a success and of a failure, for p1 < p0."""
    return math.log(p1 / p0), math.log((1.0 - p1) / (1.0 - p0))


def bernoulli_cusum_arl(p: float, p0: float, p1: float, h: float, *, max_den: int = 30) -> float:
    """Average run length from 0 of the Bernoulli CUSUM (p0 -> p1 < p0) when the true rate is ``p``.

    The two step sizes are rounded to a rational ratio ``m : k`` (denominator at
    most ``max_den``) on a lattice of ``k`` units per failure step, and the
    run-length equations ``L(i) = 1 + p L(max(0, i - m)) + (1 - p) L(i + k)``
    (``L = 0`` at and above ``h``) are solved as one banded system.
    """
    a, b = _steps(p0, p1)
    r = Fraction(-a / b).limit_denominator(max_den)
    m, k = max(1, r.numerator), r.denominator
    unit = b / k
    n_states = max(1, math.ceil(h / unit - 1e-9))
    q = 1.0 - p
    ab = np.zeros((m + k + 1, n_states))
    ab[k, :] = 1.0  # diagonal
    ab[k, 0] = 1.0 - p  # a success at 0 stays at 0
    if k < n_states:
        ab[0, k:] = -q  # A[i, i + k]
    if m < n_states:
        ab[k + m, : n_states - m] = -p  # A[i, i - m] for i >= m
    for i in range(1, min(m, n_states)):
        ab[k + i, 0] = -p  # a success below m drops to 0
    from scipy.linalg import solve_banded  # here, not at import: scipy costs an ingest worker ~70 MB

    run = solve_banded((m, k), ab, np.ones(n_states), check_finite=False)
    return float(run[0])


@lru_cache(maxsize=4096)
def _threshold(p0: float, p1: float, arl0: float) -> float:
    # Lorden: a CUSUM of log-likelihood ratios has ARL0 >= exp(h), so
    # h = ln(arl0) brackets the answer from above; log ARL is close to linear
    # in h, so regula falsi (Illinois) converges in a handful of solves.
    target = math.log(arl0)
    lo, hi = 0.0, target
    g_lo, g_hi = -target, math.log(bernoulli_cusum_arl(p0, p0, p1, hi)) - target
    if g_hi <= 0:  # pragma: no cover - Lorden's bound makes this unreachable
        return hi
    side = 0
    h = hi
    for _ in range(60):
        h = (lo * g_hi - hi * g_lo) / (g_hi - g_lo)
        g = math.log(bernoulli_cusum_arl(p0, p0, p1, h)) - target
        if 0 <= g < 0.01 or hi - lo < 1e-4:
            return h if g >= 0 else hi
        if g < 0:
            lo, g_lo = h, g
            if side == -1:
                g_hi /= 2
            side = -1
        else:
            hi, g_hi = h, g
            if side == 1:
                g_lo /= 2
            side = 1
    return hi


def cusum_threshold(p0: float, p1: float, arl0: float) -> float:
    """Smallest ``h`` (nats) whose in-control ARL of the Bernoulli CUSUM p0 -> p1 is at least ``arl0``."""
    if not 0 < p1 < p0 < 1:
        raise ValueError(f"need 0 < p1 < p0 < 1, got p0={p0}, p1={p1}")
    return _threshold(round(p0, 6), round(p1, 6), float(arl0))


@lru_cache(maxsize=64)
def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(confidence)


def wilson_upper(k: float, n: float, confidence: float) -> float:
    """One-sided Wilson score upper bound of a proportion ``k / n``."""
    if n <= 0:
        return 1.0
    z = _z(confidence)
    p = k / n
    z2n = z * z / n
    centre = p + z2n / 2
    half = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    return min(1.0, (centre + half) / (1 + z2n))


# ---------------------------------------------------------------------------
# Which trials a metric counts, and the bank of charts


def _trials(metric: str, c: Counts) -> tuple[int, int]:
    """Successes and trials of ``c`` for a Bernoulli metric."""
    if metric == "accuracy":
        return c.tp + c.tn, c.n
    if metric == "precision":
        return c.tp, c.tp + c.fp
    if metric == "recall":
        return c.tp, c.tp + c.fn
    return c.tp, c.tp + c.fp + c.fn  # f1, through J = tp / (tp + fp + fn)


def _to_rate(metric: str, value: float) -> float:
    """The Bernoulli rate behind a metric value (only F1 needs translating)."""
    if metric == "f1":
        value = value / (2.0 - value)
    return min(max(value, _P_MIN), _P_MAX)


@dataclass(frozen=True)
class _Chart:
    drop: float
    p1: float
    a: float  # step of a success (negative)
    b: float  # step of a failure (positive)
    h: float


# Thresholds are solved at baselines on this grid (each solve takes tens of ms; a sweep of a
# thousand models with a thousand baselines must not solve a thousand times).
_H_GRID = 0.01


def _grid_threshold(p0: float, p1: float, arl0: float) -> float:
    """``h`` of the chart p0 -> p1, read at the grid baselines around p0 (same relative drop).

    The larger of the two is taken. ``h`` grows with the baseline at a fixed relative
    drop (8.3 nats at 0.1, 11.1 at 0.6, 12.7 at 0.95 for 5 %), so that is the threshold
    of the grid point at or above p0, whose ARL is at least ``arl0``: a little more
    conservative than the exact solve, and exact for baselines on the grid.
    """
    ratio = p1 / p0
    k = p0 / _H_GRID
    points = {min(max(round(math.floor(k + 1e-9) * _H_GRID, 6), _P_MIN), _P_MAX),
              min(max(round(math.ceil(k - 1e-9) * _H_GRID, 6), _P_MIN), _P_MAX)}
    return max(cusum_threshold(g, g * ratio, arl0) for g in points)


def _charts(metric: str, baseline: float, cfg: PerformanceTriggerConfig) -> tuple[float, tuple[_Chart, ...]]:
    p0 = _to_rate(metric, baseline)
    drops = sorted({round(cfg.relative_drop * m, 9) for m in cfg.drop_multiples if cfg.relative_drop * m < 0.95})
    charts = []
    for d in drops:
        p1 = _to_rate(metric, baseline * (1 - d))
        if p1 >= p0:
            continue
        a, b = _steps(p0, p1)
        h = cfg.cusum_h if cfg.cusum_h is not None else _grid_threshold(p0, p1, cfg.arl0 * len(drops))
        charts.append(_Chart(d, p1, a, b, h))
    return p0, tuple(charts)


def _baseline_value(baseline: Mapping[str, float] | float, metric: str) -> float | None:
    v: float | None
    if isinstance(baseline, (int, float)):
        v = float(baseline)
    else:
        v = baseline.get(metric)
        v = None if v is None else float(v)
    return None if v is None or math.isnan(v) else v


def _fmt(x: float) -> float | None:
    """Round for evidence; nan becomes None so the evidence stays strict JSON."""
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return None
    return round(float(x), 6)


# ---------------------------------------------------------------------------
# The three rules, on window totals (and on the bucket sequence for the CUSUM)


def _binom_cdf(k: int, n: int, p: float) -> float:
    from scipy.special import bdtr  # scipy.special alone, not scipy.stats

    return float(bdtr(k, n, p))


def _floor_rule(total: Counts, cfg: PerformanceTriggerConfig) -> dict[str, Any] | None:
    if cfg.floor is None or total.n < cfg.min_samples:
        return None
    upper = wilson_upper(total.hits, total.n, cfg.confidence)
    if upper >= cfg.floor:
        return None
    return {
        "rule": "floor",
        "accuracy": _fmt(total.accuracy),
        "upper_bound": _fmt(upper),
        "floor": cfg.floor,
        "confidence": cfg.confidence,
        "n": total.n,
        # P(at most this many hits | accuracy exactly at the floor).
        "p_value": _fmt(_binom_cdf(total.hits, total.n, cfg.floor)),
    }


def _sharpe_rule(total: Counts, baseline: float, cfg: PerformanceTriggerConfig) -> dict[str, Any] | None:
    if total.n < cfg.min_samples:
        return None
    sr = total.sharpe  # per period
    if math.isnan(sr):
        return None
    base = baseline / math.sqrt(cfg.annualisation)
    limit = base - cfg.relative_drop * abs(base)
    se = math.sqrt((1 + sr * sr / 2) / total.n)
    upper = sr + _z(cfg.confidence) * se
    if upper >= limit:
        return None
    scale = math.sqrt(cfg.annualisation)
    return {
        "rule": "relative_drop",
        "test": "sharpe_upper_bound",
        "sharpe": _fmt(sr * scale),
        "upper_bound": _fmt(upper * scale),
        "limit": _fmt(limit * scale),
        "baseline": baseline,
        "n": total.n,
        "p_value": _fmt(NormalDist().cdf((sr - limit) / se)),
    }


def _matrix(buckets: Sequence[Counts] | np.ndarray) -> np.ndarray:
    """Buckets as rows ``(n, tp, fp, tn, fn, ret_sum, ret_sq_sum)``."""
    if isinstance(buckets, np.ndarray):
        return buckets.astype(float, copy=False).reshape(-1, 7)
    return np.array([(c.n, c.tp, c.fp, c.tn, c.fn, c.ret_sum, c.ret_sq_sum) for c in buckets],
                    dtype=float).reshape(-1, 7)


def _trial_columns(metric: str, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Successes and trials per bucket for a Bernoulli metric (see :func:`_trials`)."""
    n, tp, fp, tn, fn = m[:, 0], m[:, 1], m[:, 2], m[:, 3], m[:, 4]
    if metric == "accuracy":
        return tp + tn, n
    if metric == "precision":
        return tp, tp + fp
    if metric == "recall":
        return tp, tp + fn
    return tp, tp + fp + fn


def _cusum_rule(
    buckets: np.ndarray, metric: str, baseline: float, cfg: PerformanceTriggerConfig
) -> dict[str, Any] | None:
    p0, charts = _charts(metric, baseline, cfg)
    if not charts:
        return None
    ks, ns = _trial_columns(metric, buckets)
    trials = int(ns.sum())
    if trials < cfg.min_samples:
        return None
    fired, stats, segments = None, [], []
    for ch in charts:
        # S_i = max(0, S_{i-1} + x_i) is the walk C_i = x_1 + ... + x_i minus its running
        # minimum (floored at 0): one cumsum instead of a Python loop over the buckets.
        walk = np.cumsum(ks * ch.a + (ns - ks) * ch.b)
        path = walk - np.minimum(np.minimum.accumulate(walk), 0.0)
        s = float(path[-1]) if path.size else 0.0
        peak = max(0.0, float(path.max())) if path.size else 0.0
        zeros = np.flatnonzero(path <= 0.0)
        start = int(zeros[-1]) + 1 if zeros.size else 0  # first bucket since the chart last stood at 0
        segments.append(_segment(metric, ks[start:].sum(), ns[start:].sum()))
        stats.append({"drop": ch.drop, "p1": _fmt(ch.p1), "statistic": _fmt(s), "peak": _fmt(peak), "h": _fmt(ch.h)})
        if s >= ch.h and (fired is None or s / ch.h > fired[0]):
            fired = (s / ch.h, len(stats) - 1)
    if fired is None:
        return None
    best = stats[fired[1]]
    return {
        "rule": "relative_drop",
        "test": "bernoulli_cusum",
        "trials": trials,
        "p0": _fmt(p0),
        "statistic": best["statistic"],
        "threshold": best["h"],
        "chart_drop": best["drop"],
        **segments[fired[1]],
        "charts": stats,
        "arl0": cfg.arl0,
    }


def _segment(metric: str, k: float, n: float) -> dict[str, Any]:
    """The metric over the trials since the firing chart last stood at 0."""
    rate = k / n if n else float("nan")
    value = 2 * rate / (1 + rate) if metric == "f1" else rate
    return {"segment_trials": int(n), "segment_value": _fmt(value)}


def _build_firing(
    total: Counts,
    n_buckets: int,
    baseline: float | None,
    cfg: PerformanceTriggerConfig,
    rel: dict[str, Any] | None,
    floor: dict[str, Any] | None,
) -> TriggerFiring:
    m = cfg.metric
    value = total.sharpe_ratio(cfg.annualisation) if m == "sharpe" else total.metric(m)
    parts = []
    if rel is not None:
        if rel.get("test") == "bernoulli_cusum":
            seg, seg_n = rel["segment_value"], rel["segment_trials"]
            seg = value if seg is None else seg
            what = "outcomes" if m == "accuracy" else "relevant outcomes"
            # The segment since the chart last stood at 0: name its span, so that it does not read
            # as a second figure for the same moment next to the window's (the floor's).
            over = f" over the last {seg_n} {what}"
            detail = f"; CUSUM {rel['statistic']:.2f} >= {rel['threshold']:.2f} on the {rel['chart_drop']:.0%} chart"
        else:
            seg, over = value, f" over the window's {total.n} outcomes"
            detail = f"; upper {cfg.confidence:.0%} bound {rel['upper_bound']:.3f} < {rel['limit']:.3f}"
        drop = (1 - seg / baseline) if baseline else float("nan")
        parts.append(
            f"{m} fell from its baseline {baseline:.3f} to {seg:.3f}{over} ({drop:.1%} lower{detail}; "
            f"built for a {cfg.relative_drop:.0%} drop)"
        )
    if floor is not None:
        parts.append(
            f"over the window's {total.n} outcomes accuracy {floor['accuracy']:.3f} is below the floor "
            f"{cfg.floor:.2f} (upper {cfg.confidence:.0%} bound {floor['upper_bound']:.3f})"
        )
    reason = " and ".join(parts) + ("." if floor is not None or rel is None or rel.get("test") != "bernoulli_cusum"
                                    else f"; {total.n} outcomes in the window.")
    reason = reason[0].upper() + reason[1:]
    evidence = {
        "metric": m,
        "value": _fmt(value),
        "baseline": baseline,
        "relative_drop": cfg.relative_drop,
        "floor": cfg.floor,
        "n": total.n,
        "buckets": n_buckets,
        "metrics": {k: _fmt(v) for k, v in total.metrics().items()},
        "rules": [r["rule"] for r in (rel, floor) if r is not None],
        "relative": rel,
        "floor_test": floor,
    }
    return TriggerFiring(TriggerKind.PERFORMANCE, reason, evidence)


def evaluate_performance(
    buckets: Sequence[Counts] | np.ndarray,
    baseline: Mapping[str, float] | float,
    cfg: PerformanceTriggerConfig = PerformanceTriggerConfig(),
) -> TriggerFiring | None:
    """Evaluate both rules over a sequence of per-bucket counts, oldest first.

    ``buckets`` are :class:`Counts`, or rows ``(n, tp, fp, tn, fn, ret_sum,
    ret_sq_sum)`` of an array (what the sweep reads). Stateless: the CUSUM
    starts at 0 at the first bucket. ``baseline`` maps metric names to the
    version's validated values (or is the configured metric's value); with no
    baseline for the metric only the floor applies. Returns None when nothing
    fires.
    """
    buckets = _matrix(buckets)
    t = buckets.sum(axis=0) if buckets.size else np.zeros(7)
    total = Counts(int(t[0]), int(t[1]), int(t[2]), int(t[3]), int(t[4]), float(t[5]), float(t[6]))
    base = _baseline_value(baseline, cfg.metric)
    rel = None
    if base is not None:
        if cfg.metric == "sharpe":
            rel = _sharpe_rule(total, base, cfg)
        else:
            rel = _cusum_rule(buckets, cfg.metric, base, cfg)
    floor = _floor_rule(total, cfg)
    if rel is None and floor is None:
        return None
    return _build_firing(total, buckets.shape[0], base, cfg, rel, floor)


class PerformanceDetector:
    """The performance trigger, fed one outcome at a time (River-style).

    Runs the same CUSUM bank per outcome (clipping at 0 after every outcome) and
    checks the floor (and, for ``metric='sharpe'``, the Sharpe rule) on a
    window of the last ``cfg.window`` outcomes. After a firing the state
    resets on the next update, as River's detectors do.

    Parameters
    ----------
    baseline
        The validated baseline: a mapping of metric values, or the metric's value.
    cfg
        The trigger settings.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> det = PerformanceDetector({"accuracy": 0.60})
    >>> hits = np.r_[rng.random(20_000) < 0.60, rng.random(5_000) < 0.50]
    >>> first = next(i for i, h in enumerate(hits) if det.update(1, int(h)).drift_detected)
    >>> 20_000 < first < 22_000
    True
    """

    def __init__(
        self, baseline: Mapping[str, float] | float, cfg: PerformanceTriggerConfig = PerformanceTriggerConfig()
    ) -> None:
        self.cfg = cfg
        self.baseline = _baseline_value(baseline, cfg.metric)
        self._bernoulli = cfg.metric in _BERNOULLI_METRICS and self.baseline is not None
        if self._bernoulli and self.baseline is not None:  # _bernoulli implies a baseline
            self._p0, charts = _charts(cfg.metric, self.baseline, cfg)
        else:
            self._p0, charts = float("nan"), ()
        self._charts = charts
        self._a = [c.a for c in charts]
        self._b = [c.b for c in charts]
        self._h = [c.h for c in charts]
        # Which outcome codes (2 * y_true + y_pred) are trials, and which are successes.
        trial, success = {
            "accuracy": ((1, 1, 1, 1), (1, 0, 0, 1)),
            "precision": ((0, 1, 0, 1), (0, 0, 0, 1)),
            "recall": ((0, 0, 1, 1), (0, 0, 0, 1)),
            "f1": ((0, 1, 1, 1), (0, 0, 0, 1)),
        }.get(cfg.metric, ((0, 0, 0, 0), (0, 0, 0, 0)))
        self._is_trial, self._is_success = trial, success
        self._window = CountWindow(cfg.window, annualisation=cfg.annualisation)
        self._check_window = cfg.floor is not None or cfg.metric == "sharpe"
        self.drift_detected = False
        self.firing: TriggerFiring | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._s = [0.0] * len(self._charts)
        # Trials and successes since each chart last stood at 0: the CUSUM's
        # own estimate of the segment since the change.
        self._run_n = [0] * len(self._charts)
        self._run_k = [0] * len(self._charts)
        self._trials = 0
        self._window = CountWindow(self.cfg.window, annualisation=self.cfg.annualisation)

    @property
    def statistics(self) -> tuple[float, ...]:
        """Current CUSUM values, one per chart (same order as :attr:`thresholds`)."""
        return tuple(self._s)

    @property
    def thresholds(self) -> tuple[float, ...]:
        return tuple(self._h)

    @property
    def window(self) -> CountWindow:
        """The recent outcomes (since the last firing, at most ``cfg.window``)."""
        return self._window

    def update(self, y_true: Any, y_pred: Any, ret: float = 0.0) -> PerformanceDetector:
        """Add one outcome; :attr:`drift_detected` says whether it made the trigger fire."""
        if self.drift_detected:
            self.drift_detected = False
            self._reset_state()
        code = 2 * bool(y_true) + bool(y_pred)
        self._window.update(y_true, y_pred, ret)
        crossed = -1
        if self._is_trial[code]:
            self._trials += 1
            succ = self._is_success[code]
            step = self._a if succ else self._b
            s, rn, rk = self._s, self._run_n, self._run_k
            for j in range(len(s)):
                v = s[j] + step[j]
                if v > 0.0:
                    s[j] = v
                    rn[j] += 1
                    rk[j] += succ
                    if v >= self._h[j] and self._trials >= self.cfg.min_samples:
                        crossed = j
                else:
                    s[j] = 0.0
                    rn[j] = rk[j] = 0
        floor = None
        w = self._window
        if self._check_window and w.n >= self.cfg.min_samples:
            # The Wilson bound is above the observed accuracy, so skip it while that is above the floor.
            if self.cfg.floor is not None and w.hits < self.cfg.floor * w.n:
                floor = _floor_rule(w.counts, self.cfg)
            if self.cfg.metric == "sharpe" and self.baseline is not None:
                total = w.counts
                rel = _sharpe_rule(total, self.baseline, self.cfg)
                if rel is not None or floor is not None:
                    self._fire(total, rel, floor)
                return self
        if crossed >= 0 or floor is not None:
            rel = None
            if crossed >= 0:
                ch = self._charts[crossed]
                rel = {
                    "rule": "relative_drop",
                    "test": "bernoulli_cusum",
                    "trials": self._trials,
                    "p0": _fmt(self._p0),
                    "statistic": _fmt(self._s[crossed]),
                    "threshold": _fmt(ch.h),
                    "chart_drop": ch.drop,
                    "arl0": self.cfg.arl0,
                    **_segment(self.cfg.metric, self._run_k[crossed], self._run_n[crossed]),
                }
            self._fire(self._window.counts, rel, floor)
        return self

    def _fire(self, total: Counts, rel: dict[str, Any] | None, floor: dict[str, Any] | None) -> None:
        self.drift_detected = True
        self.firing = _build_firing(total, 0, self.baseline, self.cfg, rel, floor)
