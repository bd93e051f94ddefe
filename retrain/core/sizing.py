"""Trigger settings for a model's rate of labelled outcomes.

The triggers' defaults are built for a stream of at least ~10 outcomes a minute:
2,000 outcomes in a 4-hour performance window, a false alarm once in 10 million
outcomes, 500 sampled rows for a drift check, 20 outcomes per 5-minute emergency
bucket over 120 buckets. A model with one labelled prediction a day would need
years to fill them, so its triggers could never fire.

:func:`settings_for_rate` sizes them by *time* instead, each capped at the default:

* performance: at most a day of outcomes as ``min_samples`` (at least 30, which a model
  slower than 30 outcomes a day takes longer to gather), a window of three times that when
  it shrank, 1.25 times otherwise (at least the default 4 h), and
  ``arl0`` five years of outcomes (at least 500; by simulation a daily model at its baseline
  then fires about once in
  60 years of daily sweeps): the CUSUM's threshold follows the
  logarithm of ``arl0``, so a slow model sees a collapse within weeks, not never. The
  sample only guards the normal approximations: false alarms are bounded by ``arl0``
  (the CUSUM) and by the floor's confidence, whatever the sample. A larger one only
  delays the trigger: at 288 outcomes a day, 2,000 would leave a version promoted at a
  poor level (or one that collapsed) unwatched for a week;
* drift: at most a month of rows as ``min_rows`` (at least 50), in a window that holds
  1.25 times that;
* emergency: buckets holding 1.25 x ``min_samples`` outcomes, at most a year of them
  as history (at least 10 buckets).

A fast stream keeps the defaults. Pure: used by ``retrain backtest`` for the model
it builds, and for a model file's settings left at their defaults (both say what
they changed).

>>> s = settings_for_rate(1 / 1440)  # one labelled outcome a day
>>> s["thresholds.min_samples"], s["thresholds.window_minutes"] // 1440, s["thresholds.arl0"]
(30, 90, 1825.0)
>>> settings_for_rate(0.2)["thresholds.min_samples"]  # 288 a day: a day of outcomes
288
>>> settings_for_rate(100.0)["thresholds.min_samples"]  # a busy stream keeps the defaults
2000
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["settings_for_rate", "DAY_MIN", "MONTH_MIN", "YEAR_MIN"]

DAY_MIN = 1440.0
MONTH_MIN = 30 * DAY_MIN
YEAR_MIN = 365 * DAY_MIN


def settings_for_rate(rows_per_minute: float, *, min_samples: int = 2000, window_minutes: int = 240,
                      arl0: float = 10_000_000.0, drift_min_rows: int = 500, drift_current_minutes: int = 240,
                      emergency_min_samples: int = 20, emergency_bucket_minutes: int = 5,
                      emergency_history_buckets: int = 120) -> dict[str, Any]:
    """Settings (dotted paths of a model body) for ``rows_per_minute`` labelled outcomes a minute,
    from the given defaults; each sample size only shrinks and each window only widens."""
    r = max(float(rows_per_minute), 1e-9)
    perf_n = int(min(min_samples, max(30, round(r * DAY_MIN))))
    # A shrunk sample gets a window of three times it, for the CUSUM to climb in; otherwise 1.25 times.
    perf_window = max(window_minutes, math.ceil((3.0 if perf_n < min_samples else 1.25) * perf_n / r))
    alarm = float(min(arl0, max(500.0, round(r * 5 * YEAR_MIN))))
    drift_n = int(min(drift_min_rows, max(50, round(r * MONTH_MIN))))
    drift_window = max(drift_current_minutes, math.ceil(1.25 * drift_n / r))
    bucket = max(emergency_bucket_minutes, math.ceil(1.25 * emergency_min_samples / r))
    history = int(min(emergency_history_buckets, max(10, math.floor(YEAR_MIN / bucket))))
    return {"thresholds.min_samples": perf_n, "thresholds.window_minutes": perf_window, "thresholds.arl0": alarm,
            "drift.min_rows": drift_n, "drift.current_minutes": drift_window,
            "emergency.bucket_minutes": bucket, "emergency.history_buckets": history}
