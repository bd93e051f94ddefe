"""How much evidence a validation gate needs, and which gate can get it in time (ADAPT-016).

A gate asks for the rows its test needs to show the configured improvement at the
configured power, not for a fixed number of hours:

* **paired** (holdout, shadow, walk-forward: both models on the same rows): the
  McNemar sample size (Connor, 1987) for an accuracy gain of ``min_improvement``
  (relative) over production, given the share of rows the two models disagree on;
* **independent** (a canary stage: each model on its own traffic): the
  two-proportion sample size per arm to see a ``rollback_degradation`` drop.

:func:`plan_gate` then picks the gate. When the live labelled rows expected within
the shadow's time limit cover what the test needs, the candidate proves itself on
live traffic (shadow, then canary stages). Otherwise (a model with a few hundred
predictions a day, a daily model) no live gate can conclude in time, and the
candidate is judged on a **walk-forward** evaluation over the most recent labelled
history instead: :func:`walk_forward_folds` lays out folds in time order, each fit
only on rows before it, and production is scored only on rows newer than its own
training data, so neither side sees the rows it is judged on.

Pure functions of counts and settings: no I/O, no clock.

>>> paired_rows_needed(0.60, 0.02, discordance=0.20, confidence=0.95, power=0.8)
8585
>>> plan_gate(8585, labelled_per_hour=12.0, max_hours=48.0).gate
'walk_forward'
>>> plan_gate(8585, labelled_per_hour=5000.0, max_hours=48.0).gate
'shadow'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["paired_rows_needed", "unplanned_paired_rows", "independent_rows_needed", "GatePlan", "plan_gate",
           "walk_forward_folds", "MIN_DISCORDANCE"]

#: Floor of the disagreement share used for sizing: two fits of the same model on overlapping
#: data can disagree on almost no holdout row, which would size the gate at a handful of rows.
MIN_DISCORDANCE = 0.05


def _z(p: float) -> float:
    from scipy.stats import norm  # first use only: scipy.stats is heavy to import

    return float(norm.ppf(p))


def paired_rows_needed(p_production: float, min_improvement: float, *, discordance: float, confidence: float,
                       power: float) -> int:
    """Paired rows a one-sided McNemar test needs to show an accuracy gain of ``min_improvement``
    (relative to ``p_production``) at ``confidence`` with probability ``power``.

    ``discordance`` is the share of rows exactly one model gets right (floored at
    :data:`MIN_DISCORDANCE`, and above the gain itself, which it must contain).
    """
    delta = max(1e-6, abs(p_production) * min_improvement)
    psi = min(1.0, max(discordance, MIN_DISCORDANCE, delta * 1.01))
    za, zb = _z(confidence), _z(power)
    n = ((za * math.sqrt(psi) + zb * math.sqrt(max(psi - delta * delta, 0.0))) / delta) ** 2
    return int(math.ceil(n))


def unplanned_paired_rows(level: float | None, validation: Any) -> int:
    """The paired rows for a gate with no plan from training (a version trained before gates were
    sized, or a backtest note): at production's ``level`` (0.5 when unknown) and the floor disagreement.
    ``validation`` is a ``ValidationSettings``."""
    v = validation
    return paired_rows_needed(0.5 if level is None else level, v.min_improvement, discordance=MIN_DISCORDANCE,
                              confidence=v.confidence, power=v.power)


def independent_rows_needed(p_production: float, degradation: float, *, confidence: float, power: float) -> int:
    """Rows per arm a one-sided two-proportion test needs to see an accuracy ``degradation``
    (relative to ``p_production``) at ``confidence`` with probability ``power``.

    >>> independent_rows_needed(0.60, 0.10, confidence=0.95, power=0.8)
    841
    """
    p1 = min(max(p_production, 1e-6), 1 - 1e-6)
    p2 = p1 * (1.0 - degradation)
    bar = (p1 + p2) / 2
    za, zb = _z(confidence), _z(power)
    n = ((za * math.sqrt(2 * bar * (1 - bar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) / (p1 - p2)) ** 2
    return int(math.ceil(n))


@dataclass(frozen=True)
class GatePlan:
    """The gate a candidate goes through and why: ``shadow`` (live, then canary stages) or
    ``walk_forward`` (offline, on the most recent labelled history)."""

    gate: str
    rows_needed: int
    rows_expected: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.gate, "rows_needed": self.rows_needed, "rows_expected": round(self.rows_expected, 1),
                "reason": self.reason}


def plan_gate(rows_needed: int, *, labelled_per_hour: float, max_hours: float, shadow: bool = True,
              canary_rows_needed: int = 0, stages: tuple[float, ...] = (), stage_max_hours: float = 0.0,
              walk_forward: bool = True) -> GatePlan:
    """Live (shadow, then the canary stages) when the labelled rows expected within each phase's time
    limit cover what its test needs; walk-forward otherwise (unless turned off: then live anyway).

    ``stages`` are the canary shares in %; a stage gets ``share`` % of the labelled rows.

    >>> plan_gate(8585, labelled_per_hour=300, max_hours=48, canary_rows_needed=841, stages=(10.0, 100.0),
    ...           stage_max_hours=24).reason.split(":")[0]
    'walk-forward on recent history'
    """
    rate = max(0.0, labelled_per_hour)
    expected = rate * max_hours
    said = f"{rate:,.1f} labelled rows an hour"
    short: list[str] = []
    if shadow and expected < rows_needed:
        short.append(f"shadow would see ~{expected:,.0f} paired rows in its {max_hours:g} h limit, fewer than "
                     f"the {rows_needed:,} its test needs")
    for share in stages:
        got = rate * share / 100.0 * stage_max_hours
        if got < canary_rows_needed:
            short.append(f"the {share:g}% canary stage would see ~{got:,.0f} outcomes in its {stage_max_hours:g} h "
                         f"limit, fewer than the {canary_rows_needed:,} its test needs")
            break
    if not short:
        return GatePlan("shadow" if shadow else "canary", rows_needed, expected,
                        f"live: {said} bring the rows each test needs within its time limit "
                        f"({rows_needed:,} paired rows for shadow, ~{expected:,.0f} expected in {max_hours:g} h)")
    if not walk_forward:
        return GatePlan("shadow" if shadow else "canary", rows_needed, expected,
                        f"live, though {'; '.join(short)} (validation.walk_forward is off)")
    return GatePlan("walk_forward", rows_needed, expected,
                    f"walk-forward on recent history: at {said}, {'; '.join(short)}")


def walk_forward_folds(ts: np.ndarray, *, after: float | None, max_rows: int, folds: int,
                       min_train_rows: int) -> list[tuple[int, int]]:
    """Folds ``[(start, end), ...]`` of row indices (``ts`` ascending) for a walk-forward evaluation.

    Only rows newer than ``after`` (production's last training row) are evaluated, at
    most the ``max_rows`` newest, and never so many that the first fold's fit would
    have fewer than ``min_train_rows`` rows before it. Each fold is fit on every row
    before its ``start``: no fold sees the rows it is scored on.

    >>> walk_forward_folds(np.arange(100.0), after=49.5, max_rows=1000, folds=3, min_train_rows=20)
    [(50, 67), (67, 83), (83, 100)]
    >>> walk_forward_folds(np.arange(100.0), after=None, max_rows=30, folds=3, min_train_rows=20)
    [(70, 80), (80, 90), (90, 100)]
    """
    n = int(len(ts))
    first = int(np.searchsorted(ts, after, side="right")) if after is not None else 0
    first = max(first, n - max(0, int(max_rows)), int(min_train_rows))
    if first >= n or folds < 1:
        return []
    k = min(int(folds), n - first)
    edges = np.linspace(first, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
