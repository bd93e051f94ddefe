"""The router benchmark runs end to end at a small size and accounts for every row.

Not a speed test (figures are the bench's to print): it checks that each mode's
routed predictions all reach the relay, that the rows are spread over fresh instances,
and that every figure the README quotes is there.
"""

from __future__ import annotations

import math

import pytest

from retrain.benchmarks.router import overhead

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_the_overhead_bench_reports_every_routed_row_over_fresh_instances():
    # Given a small run: 400 routed predictions over 2 instances, each with a 200-row warm-up
    res = overhead(pairs=400, instances=2, rate=10**6)
    # Then every routed prediction (warm-ups too) reached the relay process, once
    assert res["predictions_relay_mode"] == 400
    assert res["reported_rows"] == 2 * (200 + 200)
    # And the figure is over both instances, with its standard error, and every quoted figure is a number
    assert len(res["overhead_pct_instances"]) == 2 and res["overhead_pct_stderr"] is not None
    for key in ("overhead_pct", "overhead_pct_thread_mode", "overhead_pct_without_canary", "router_gc_us",
                "router_background_us", "router_extra_us_per_prediction", "bare_cpu_us_per_prediction"):
        assert math.isfinite(res[key]), key
    assert res["bare_cpu_us_per_prediction"] > 0
