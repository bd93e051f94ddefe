"""Feature drift: scipy-equal statistics, a caught 0.2 sd shift, quiet on identical data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from retrain.core.drift import DriftConfig, DriftReport, adjust_pvalues, detect_drift, ks_2samp_columns, ks_pvalue


@pytest.mark.parametrize("n, m", [(10_000, 10_000), (3_000, 700), (500, 2_000)])
def test_ks_matches_scipy(n, m):
    # Given samples with small and large differences
    rng = np.random.default_rng(n + m)
    ref = rng.normal(size=(n, 6))
    cur = rng.normal(size=(m, 6)) + np.array([0, 0.02, 0.05, 0.1, 0.2, 0.4]) * 1.0
    # When tested column by column at once
    d, p, w = ks_2samp_columns(ref, cur)
    for j in range(6):
        want = stats.ks_2samp(ref[:, j], cur[:, j], method="asymp")
        # Then D is scipy's exactly, and the p-value within 1 % (6 % in the tail, both tiny beyond 1e-14)
        assert d[j] == pytest.approx(want.statistic, abs=1e-12)
        if want.pvalue >= 1e-14:
            rel = 0.01 if want.pvalue >= 1e-3 else 0.06
            assert p[j] == pytest.approx(want.pvalue, rel=rel, abs=1e-300)
        else:
            assert p[j] < 1e-13
        assert w[j] == pytest.approx(stats.wasserstein_distance(ref[:, j], cur[:, j]), rel=1e-9)


def test_ks_handles_ties_like_scipy():
    # Given integer-valued features with many ties
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 5, size=(2_000, 3)).astype(float)
    cur = rng.integers(0, 6, size=(1_500, 3)).astype(float)
    d, p, _ = ks_2samp_columns(ref, cur)
    for j in range(3):
        want = stats.ks_2samp(ref[:, j], cur[:, j], method="asymp")
        assert d[j] == pytest.approx(want.statistic, abs=1e-12)
        assert p[j] == pytest.approx(want.pvalue, rel=0.06, abs=1e-300)


def test_pvalue_is_monotone_and_bounded():
    p = ks_pvalue(np.linspace(0, 1, 50), 1000, 1000)
    assert p[0] == 1.0 and np.all(np.diff(p) <= 0) and p.min() >= 0


def test_detects_a_02_sd_shift_on_10000_rows():
    # Given 20 features, 5 of them shifted by 0.2 standard deviations
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(10_000, 20))
    cur = rng.normal(size=(10_000, 20))
    cur[:, :5] += 0.2
    names = [f"x{j}" for j in range(20)]
    # When checked with the defaults
    report = detect_drift(ref, cur, names)
    # Then exactly the shifted five are flagged, with a PSI near the documented 0.035-0.05
    assert report.drifted_features == tuple(names[:5])
    assert report.share_drifted == 0.25
    assert all(0.02 < report[n].psi < 0.07 for n in names[:5])
    assert all(0.1 < report[n].wasserstein < 0.3 for n in names[:5])


def test_identical_distributions_are_not_flagged_beyond_the_expected_rate():
    # Given 40 draws of 20 features from one distribution, 2,000 rows a side
    rng = np.random.default_rng(42)
    raw_hits, reports_with_flags = 0, 0
    for _ in range(40):
        ref, cur = rng.normal(size=(2_000, 20)), rng.normal(size=(2_000, 20))
        raw = detect_drift(ref, cur, correction="none", min_effect=0.0)
        raw_hits += sum(f.p_value < 0.05 for f in raw.features)
        reports_with_flags += detect_drift(ref, cur).drifted
    # Then raw p-values fall below 0.05 at about the nominal 5 % (800 tests)
    assert 0.02 < raw_hits / 800 < 0.09
    # And BH keeps the chance of any false flag in a report near alpha (expected 2 of 40)
    assert reports_with_flags <= 6


def test_identical_distributions_on_10000_rows_are_never_flagged():
    # Given large samples, where the effect-size floor (D >= 0.05) is 4 noise standard deviations away
    rng = np.random.default_rng(43)
    for _ in range(3):
        ref, cur = rng.normal(size=(10_000, 20)), rng.normal(size=(10_000, 20))
        # Then nothing is flagged even without a multiple-testing correction
        assert detect_drift(ref, cur, correction="none").drifted_features == ()


def test_bh_and_bonferroni_adjustments():
    # Given a family of p-values
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    # Then Bonferroni multiplies by the family size and BH is the step-up procedure
    assert adjust_pvalues(p, "bonferroni") == pytest.approx(np.minimum(1, p * 10))
    bh = adjust_pvalues(p, "bh")
    expected = np.minimum.accumulate((p * 10 / np.arange(1, 11))[::-1])[::-1]
    assert bh == pytest.approx(expected)
    assert adjust_pvalues(p, "none") == pytest.approx(p)
    # And BH flags more than Bonferroni at the same alpha
    assert (bh < 0.05).sum() > (adjust_pvalues(p, "bonferroni") < 0.05).sum()


def test_bh_flags_more_small_shifts_than_bonferroni():
    # Given 10 features each shifted by a small amount, 800 rows
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(800, 10))
    cur = rng.normal(size=(800, 10)) + 0.12
    bh = detect_drift(ref, cur, correction="bh", min_effect=0.0)
    bonf = detect_drift(ref, cur, correction="bonferroni", min_effect=0.0)
    assert set(bonf.drifted_features) <= set(bh.drifted_features)
    assert len(bh.drifted_features) > len(bonf.drifted_features)


def test_categorical_chi_square():
    # Given a categorical feature whose mix changes from 50/30/20 to 40/30/30, and one that does not change
    rng = np.random.default_rng(5)
    ref = np.column_stack([rng.choice(3, 5_000, p=[0.5, 0.3, 0.2]), rng.choice(4, 5_000)])
    cur = np.column_stack([rng.choice(3, 4_000, p=[0.4, 0.3, 0.3]), rng.choice(4, 4_000)])
    # When tested as categorical
    report = detect_drift(ref, cur, ["mix", "flat"], categorical=["mix", "flat"])
    # Then the statistic is scipy's chi-square and the mix is flagged (total variation 0.10)
    table = np.array([np.bincount(ref[:, 0]), np.bincount(cur[:, 0])])
    want = stats.chi2_contingency(table, correction=False)
    assert report["mix"].test == "chi2"
    assert report["mix"].statistic == pytest.approx(want.statistic)
    assert report["mix"].p_value == pytest.approx(want.pvalue, abs=1e-300)
    assert report["mix"].effect_size == pytest.approx(0.1, abs=0.02)
    assert report.drifted_features == ("mix",)


def test_string_categories_and_missing_values():
    # Given an object array with a string category and a numeric column with NaN
    rng = np.random.default_rng(6)
    num_r, num_c = rng.normal(size=1_000), rng.normal(size=1_000) + 0.5
    num_r[::10] = np.nan
    ref = np.empty((1_000, 2), dtype=object)
    cur = np.empty((1_000, 2), dtype=object)
    ref[:, 0], cur[:, 0] = num_r, num_c
    ref[:, 1] = rng.choice(["a", "b"], 1_000)
    cur[:, 1] = rng.choice(["a", "b", "c"], 1_000)
    report = detect_drift(ref, cur, ["num", "cat"], categorical=["cat"])
    # Then NaN rows are dropped for that feature only, and the new category is noticed
    assert report["num"].n_reference == 900
    clean = num_r[~np.isnan(num_r)]
    assert report["num"].statistic == pytest.approx(stats.ks_2samp(clean, num_c).statistic)
    assert set(report.drifted_features) == {"num", "cat"}


def test_report_round_trips_through_strict_json():
    rng = np.random.default_rng(7)
    report = detect_drift(rng.normal(size=(500, 3)), rng.normal(size=(400, 3)), ["a", "b", "c"])
    text = json.dumps(report.to_json(), allow_nan=False)
    back = DriftReport.from_json(json.loads(text))
    assert back == report
    assert back.drifted_features == report.drifted_features


def test_config_object_and_validation():
    rng = np.random.default_rng(8)
    ref, cur = rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + [0, 1]
    report = detect_drift(ref, cur, config=DriftConfig(alpha=0.01, correction="bonferroni", min_psi=0.1))
    assert report.alpha == 0.01 and report.drifted_features == ("f1",)
    with pytest.raises(ValueError):
        DriftConfig(correction="holm")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        detect_drift(ref, cur[:, :1])
    with pytest.raises(ValueError):
        detect_drift(ref, cur, ["a", "b"], categorical=["zzz"])
