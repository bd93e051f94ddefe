"""Emergency detection: levels by distance and speed, quiet on noise, honest about small buckets."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np
import pytest

from retrain.core.domain import Severity, TriggerKind
from retrain.core.emergency import EmergencyConfig, detect_emergency, detect_emergency_from_buckets
from retrain.core.windows import Counts

# Levels by distance only: no escalation for speed.
NO_SPEED = EmergencyConfig(consecutive=99, jump_sigma=float("inf"))


def history(rng: np.random.Generator, mean: float = 0.60, sd: float = 0.01, n: int = 60) -> np.ndarray:
    h = rng.normal(mean, sd, n)
    # Exactly the stated mean and sd, so that z is known in advance.
    return (h - h.mean()) / h.std(ddof=1) * sd + mean


@pytest.mark.parametrize(
    "z, level",
    [(2.5, None), (3.5, Severity.LOW), (4.5, Severity.MEDIUM), (5.5, Severity.HIGH), (6.5, Severity.CRITICAL)],
)
def test_levels_by_distance(z, level):
    # Given a history with mean 0.60 and sd 0.01
    h = history(np.random.default_rng(1))
    # When the latest bucket is z sigma below
    firing = detect_emergency(h, 0.60 - z * 0.01, NO_SPEED)
    # Then the severity is the documented level
    if level is None:
        assert firing is None
    else:
        assert firing is not None and firing.kind is TriggerKind.EMERGENCY
        assert firing.severity is level
        assert firing.evidence["z"] == pytest.approx(z)
        json.dumps(firing.to_json(), allow_nan=False)


def test_sustained_badness_escalates_one_level():
    # Given three buckets in a row at 3.5 sigma below
    h = history(np.random.default_rng(2))
    recent = [0.565, 0.565, 0.565]
    # Then LOW becomes MEDIUM, and two bad buckets are not enough
    assert detect_emergency(h, recent).severity is Severity.MEDIUM
    assert detect_emergency(h, recent[1:]).severity is Severity.LOW
    assert detect_emergency(h, recent).evidence["consecutive_bad"] == 3


def test_a_cliff_escalates_one_level():
    # Given a previous bucket at the mean and then a fall of 4.5 sigma in one bucket
    h = history(np.random.default_rng(3))
    # Then MEDIUM becomes HIGH; the same level reached by a slide stays MEDIUM
    assert detect_emergency(h, [0.60, 0.555]).severity is Severity.HIGH
    assert detect_emergency(h, [0.575, 0.555]).severity is Severity.MEDIUM
    # And CRITICAL is the ceiling
    assert detect_emergency(h, [0.60, 0.50]).severity is Severity.CRITICAL


def test_no_firing_on_normal_noise():
    # Given 1,000 checks of a latest bucket drawn from the same noise as a 60-bucket history
    rng = np.random.default_rng(4)
    fired = 0
    for _ in range(1_000):
        series = rng.normal(0.60, 0.01, 61)
        fired += detect_emergency(series[:-1], series[-1]) is not None
    # Then 3 sigma fires rarely (0.13 % for a known sigma, a little more when it is estimated)
    assert fired <= 6


def test_a_small_bucket_is_judged_by_its_own_noise():
    # Given an hour of 1,000-outcome buckets at 0.60
    rng = np.random.default_rng(5)
    hist = [Counts(n=1000, tp=int(k), fn=1000 - int(k)) for k in rng.binomial(1000, 0.60, 60)]
    # When a 25-outcome bucket shows 0.40: 12 sigma of the history's spread, but only 2 binomial standard errors
    small = Counts(n=25, tp=10, fn=15)
    # Then it does not fire, while a 1,000-outcome bucket at 0.50 does
    assert detect_emergency(hist, small) is None
    big = detect_emergency(hist, Counts(n=1000, tp=500, fn=500))
    assert big is not None and big.severity is Severity.CRITICAL
    assert big.evidence["n_latest"] == 1000
    # And a bucket below min_samples is not judged at all
    assert detect_emergency(hist, Counts(n=5, fn=5)) is None


def test_tiny_and_constant_histories_do_not_fire():
    assert detect_emergency([0.6, 0.6, 0.61], 0.1) is None  # too short
    assert detect_emergency([0.6] * 30, 0.5) is None  # no scale to measure against
    # Unless a floor of sigma is configured
    firing = detect_emergency([0.6] * 30, 0.5, EmergencyConfig(min_std=0.01))
    assert firing is not None and firing.severity is Severity.CRITICAL


def test_robust_centre_and_scale_ignore_an_outlier():
    # Given a history with one wild bucket, which inflates the standard deviation
    h = list(history(np.random.default_rng(6))) + [0.0]
    latest = 0.55  # 5 sigma below in the clean history
    assert detect_emergency(h, latest) is None
    robust = detect_emergency(h, latest, EmergencyConfig(robust=True))
    assert robust is not None and robust.evidence["robust"] is True


def test_direction_up():
    # Given an error rate where higher is worse
    h = history(np.random.default_rng(7), mean=0.1, sd=0.01)
    cfg = EmergencyConfig(direction="up", consecutive=99, jump_sigma=float("inf"))
    assert detect_emergency(h, 0.05, cfg) is None
    assert detect_emergency(h, 0.145, cfg).severity is Severity.MEDIUM


def test_from_minute_buckets_with_settings_object():
    # Given two hours of minute buckets at 0.60 (200 outcomes each), then 5 minutes at 0.45
    rng = np.random.default_rng(8)
    now = datetime(2026, 1, 5, 12, 0, 30, tzinfo=timezone.utc)
    starts = [now.replace(second=0) - timedelta(minutes=m) for m in range(124, -1, -1)]
    accs = [0.60] * 120 + [0.45] * 5
    counts = [Counts(n=200, tp=int(k), fn=200 - int(k)) for k in rng.binomial(200, accs)]
    settings = SimpleNamespace(enabled=True, sigma=3.0, history_buckets=20, bucket_minutes=5)
    # When grouped into 5-minute buckets and checked
    firing = detect_emergency_from_buckets(counts, starts, now, settings)
    # Then the last bucket (1,000 outcomes at 0.45) is an emergency on accuracy
    assert firing is not None and firing.evidence["metric"] == "accuracy"
    assert firing.evidence["n_latest"] == 1000
    assert firing.severity in (Severity.HIGH, Severity.CRITICAL)
    # And the same hours without the drop are quiet
    calm = [Counts(n=200, tp=int(k), fn=200 - int(k)) for k in rng.binomial(200, [0.60] * 125)]
    assert detect_emergency_from_buckets(calm, starts, now, settings) is None


def test_config_is_validated():
    with pytest.raises(ValueError):
        EmergencyConfig(levels=(3, 2, 5, 6))
    with pytest.raises(ValueError):
        EmergencyConfig(direction="sideways")  # type: ignore[arg-type]
    assert EmergencyConfig.from_sigma(2.5).levels == (2.5, 3.5, 4.5, 5.5)
