"""The performance trigger as the sweep runs it: recomputed every minute over the last window.

The false-alarm rule stated in retrain.core.triggers ("Sliding windows") is checked here on
stable streams: a model that holds its baseline is not flagged, sweep after sweep.
"""

from __future__ import annotations

import numpy as np
import pytest

from retrain.core.triggers import PerformanceTriggerConfig, evaluate_performance
from retrain.core.windows import Counts


def _minutes(rng: np.random.Generator, acc: list[float] | np.ndarray, per_minute: int) -> list[Counts]:
    hits = rng.binomial(per_minute, acc)
    return [Counts(n=per_minute, tp=int(k), fn=per_minute - int(k)) for k in hits]


def _sweeps(buckets: list[Counts], window: int, cfg: PerformanceTriggerConfig, baseline: float) -> list[int]:
    """Minutes at which a sweep over the last ``window`` buckets fires."""
    return [t for t in range(window, len(buckets) + 1)
            if evaluate_performance(buckets[t - window:t], {"accuracy": baseline}, cfg) is not None]


@pytest.mark.parametrize("per_minute", [100, 1000])
def test_a_stable_model_swept_every_minute_for_two_days_is_never_flagged(per_minute):
    # Given a model at its validated 0.60, 2 days of minute buckets, the default window and thresholds
    rng = np.random.default_rng(per_minute)
    buckets = _minutes(rng, np.full(2 * 24 * 60, 0.60), per_minute)
    cfg = PerformanceTriggerConfig(min_samples=2000)
    # When the sweep evaluates the last 240 minutes every minute (2,641 overlapping windows)
    fired = _sweeps(buckets, 240, cfg, 0.60)
    # Then nothing fires
    assert fired == []


def test_the_same_sweeps_see_a_real_drop_within_the_hour():
    # Given the same model falling to 0.50 after a day at 0.60, at 100 outcomes a minute
    rng = np.random.default_rng(1)
    buckets = _minutes(rng, np.r_[np.full(24 * 60, 0.60), np.full(120, 0.50)], 100)
    fired = _sweeps(buckets, 240, PerformanceTriggerConfig(min_samples=2000), 0.60)
    # Then the first firing comes within the hour after the change, and every sweep after it fires
    first = fired[0] - 24 * 60
    assert 0 < first <= 60
    assert fired == list(range(fired[0], len(buckets) + 1))
