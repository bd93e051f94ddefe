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


FIVE_MIN = 288 / 1440  # 288 labelled outcomes a day


def test_a_stream_of_288_a_day_needs_a_day_of_outcomes_not_a_week():
    s = settings_for_rate(FIVE_MIN)
    assert s["thresholds.min_samples"] == 288
    # the window holds three times the sample
    assert s["thresholds.window_minutes"] * FIVE_MIN >= 3 * s["thresholds.min_samples"]
    # a day of outcomes, whatever the rate between 30 a day and the default's 2,000
    assert settings_for_rate(1.0)["thresholds.min_samples"] == 1440
    assert settings_for_rate(30 / 1440)["thresholds.min_samples"] == 30


def test_a_version_promoted_below_the_floor_is_seen_within_a_day_at_288_a_day():
    # A version validated at 0.27 (its baseline) keeps serving at 0.30: only the floor can see it.
    s = settings_for_rate(FIVE_MIN)
    cfg = _config(s)
    rng = np.random.default_rng(3)
    hits = rng.random(2 * 288) < 0.30
    first = next((i for i in range(1, len(hits) + 1)
                  if evaluate_performance([Counts(n=1, tp=int(h), fn=int(not h)) for h in hits[:i]],
                                          {"accuracy": 0.27}, cfg) is not None), None)
    assert first is not None and first <= 288, first


def test_288_a_day_at_its_baseline_rarely_fires_on_a_day_sample():
    s = settings_for_rate(FIVE_MIN)
    cfg = _config(s)
    window = int(s["thresholds.window_minutes"] * FIVE_MIN)
    fired = 0
    for seed in range(10):
        hits = np.random.default_rng(2000 + seed).random(14 * 288) < 0.70
        # swept every 12 outcomes (hourly) over the window's outcomes
        for end in range(s["thresholds.min_samples"], len(hits), 12):
            recent = hits[max(0, end - window):end]
            ones = int(recent.sum())
            if evaluate_performance([Counts(n=len(recent), tp=ones, fn=len(recent) - ones)], {"accuracy": 0.70},
                                    cfg) is not None:
                fired += 1
                break
    # at most one of ten model-fortnights swept hourly
    assert fired <= 1, fired
