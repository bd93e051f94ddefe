"""The policy benchmark's data and targets (retrain.benchmarks.policy): public data only, the
rates it claims, and the issue's targets computed from the figures."""

from __future__ import annotations

import numpy as np
import pytest

from retrain.benchmarks.policy import RATES, REAL, STREAMS, dataset, targets

pytest.importorskip("river")


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize("rate", list(RATES))
def test_each_stream_comes_at_each_rate_in_time_order(name, rate):
    d = dataset(name, rate, scale=0.05)
    gap = RATES[rate][0]
    assert len(d) >= 200 and d.X.shape == (len(d), len(d.features))
    assert np.all(np.diff(d.ts) == gap)
    assert set(np.unique(d.y)) <= {0, 1} and 0.05 < d.y.mean() < 0.95


def test_the_real_sets_are_daily_and_sp500_carries_its_returns():
    sp = dataset("sp500", "daily")
    assert len(sp) == 1257 and sp.ret is not None
    # the label is the sign of the return the strategy would earn: no look-ahead in the features
    assert np.array_equal(sp.y, (sp.ret > 0).astype(np.int8))
    trump = dataset("trump", "daily")
    assert len(trump) > 900 and trump.ret is None
    assert set(REAL) == {"sp500", "trump"}


def test_a_drifting_stream_changes_its_concept_half_way():
    # SEA 0 -> 3: a model fit on the first half does worse on the second than on the first
    from sklearn.linear_model import LogisticRegression

    d = dataset("sea", "5min", scale=0.5)
    half = len(d) // 2
    m = LogisticRegression().fit(d.X[: half // 2], d.y[: half // 2])
    before = (m.predict(d.X[half // 2: half]) == d.y[half // 2: half]).mean()
    after = (m.predict(d.X[half + 200:]) == d.y[half + 200:]).mean()
    assert before - after > 0.03, (before, after)


def test_targets_on_stationary_data_judge_spend_not_gain():
    f = {k: {"accuracy": 0.8, "cost_usd": c} for k, c in
         (("auto", 0.05), ("never", 0.0), ("every_1d", 1.0), ("every_7d", 0.2), ("every_30d", 0.05))}
    t = targets(f, drift=False)
    assert t["auto_stationary_spend"]["met"] and "auto_vs_never" not in t
    assert t["auto_vs_best_fixed"]["best"] == "every_30d" and t["auto_vs_best_fixed"]["met"]
