"""Trigger settings sized for a model's rate (retrain.core.sizing), checked by simulation with the real
performance trigger: a daily model sees a collapse within weeks and rarely fires on noise."""

from __future__ import annotations

import numpy as np

from retrain.core.sizing import settings_for_rate
from retrain.core.triggers import PerformanceTriggerConfig, evaluate_performance
from retrain.core.windows import Counts

DAILY = 1 / 1440


def _config(s: dict) -> PerformanceTriggerConfig:
    return PerformanceTriggerConfig(metric="accuracy", relative_drop=0.05, floor=0.55,
                                    min_samples=s["thresholds.min_samples"], arl0=s["thresholds.arl0"])


def _first_firing(hits: np.ndarray, window: int, cfg: PerformanceTriggerConfig, baseline: float) -> int | None:
    """The first day (one outcome a day) at which a daily sweep over the last ``window`` days fires."""
    for day in range(len(hits)):
        recent = hits[max(0, day + 1 - window):day + 1]
        buckets = [Counts(n=1, tp=int(h), fn=int(not h)) for h in recent]
        if evaluate_performance(buckets, {"accuracy": baseline}, cfg) is not None:
            return day
    return None


def test_the_defaults_stay_for_a_busy_stream_and_shrink_by_time_for_a_slow_one():
    busy = settings_for_rate(100.0)
    assert busy["thresholds.min_samples"] == 2000 and busy["thresholds.arl0"] == 10_000_000.0
    assert busy["thresholds.window_minutes"] == 240 and busy["drift.min_rows"] == 500
    daily = settings_for_rate(DAILY)
    assert daily["thresholds.min_samples"] == 30 and daily["drift.min_rows"] == 50
    # every window holds what it asks for at that rate
    assert daily["thresholds.window_minutes"] * DAILY >= daily["thresholds.min_samples"]
    assert daily["drift.current_minutes"] * DAILY >= daily["drift.min_rows"]
    assert daily["emergency.history_buckets"] >= 10


def test_a_daily_model_sees_a_collapse_within_weeks():
    s = settings_for_rate(DAILY)
    cfg, window = _config(s), s["thresholds.window_minutes"] // 1440
    rng = np.random.default_rng(5)
    delays = []
    for _ in range(20):
        # a year at its baseline 0.70, then the concept flips: 0.35
        hits = np.r_[rng.random(365) < 0.70, rng.random(200) < 0.35]
        first = _first_firing(hits[300:], window, cfg, 0.70)
        assert first is not None and first >= 65 - 1, first  # never before the flip...
        delays.append(first - 65)
    # ...and within weeks after it
    assert np.median(delays) <= 30, delays


def test_a_daily_model_at_its_baseline_rarely_fires():
    s = settings_for_rate(DAILY)
    cfg, window = _config(s), s["thresholds.window_minutes"] // 1440
    # 30 models, each two years at its baseline, swept daily
    fired = [_first_firing(np.random.default_rng(1000 + seed).random(730) < 0.70, window, cfg, 0.70)
             for seed in range(30)]
    # at most a few false alarms in 60 model-years
    assert sum(f is not None for f in fired) <= 3, fired
