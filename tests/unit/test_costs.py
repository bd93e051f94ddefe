"""Costs (ADAPT-013): measuring a training, pricing it, estimating the next one, reading the node."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrain.core.costs import (
    CostBreakdown,
    CostRates,
    Opportunity,
    ResourceMeter,
    ResourceUsage,
    estimate_cost,
    price,
    read_resources,
)
from retrain.core.policy import ResourceReading


def _busy(seconds: float) -> int:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


# -- ResourceMeter -------------------------------------------------------------------------


def test_meter_measures_a_busy_loop() -> None:
    # Given a meter sampling every 20 ms
    # When a loop runs inside it until it has burnt 0.3 s of CPU (by its own clock: on a loaded
    # machine the same wall time may give it far less)
    with ResourceMeter(interval_s=0.02) as m:
        start_cpu, deadline = time.process_time(), time.monotonic() + 60
        while time.process_time() - start_cpu < 0.3 and time.monotonic() < deadline:
            _busy(0.01)
    # Then CPU, peak RSS and wall time are all measured
    u = m.usage
    assert u.cpu_seconds > 0.2
    assert u.peak_rss_mb > 0
    assert u.wall_seconds >= 0.3
    # and the sampler kept running while the loop held the GIL
    assert u.samples >= 5


def test_meter_sees_a_short_lived_allocation() -> None:
    # Given a baseline reading of this process
    with ResourceMeter(interval_s=0.01) as idle:
        time.sleep(0.05)
    # When 64 MB are touched and held for a while, then freed, inside the block
    with ResourceMeter(interval_s=0.01) as m:
        blob = b"\x01" * (64 << 20)
        time.sleep(0.15)
        del blob
    # Then the peak shows them although they are gone at exit
    assert m.usage.peak_rss_mb >= idle.usage.peak_rss_mb + 50


def test_meter_counts_the_cpu_of_child_processes() -> None:
    # Given a training that forks a busy child and waits for it
    # The child burns 0.3 s of its own CPU time (not of wall time: on a busy machine the
    # scheduler may give it far less CPU than wall time, and the figure measures CPU).
    code = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    with ResourceMeter() as m:
        subprocess.run([sys.executable, "-c", code], check=True)
    # Then the child's CPU is in the figure, although this process mostly slept
    assert m.usage.cpu_seconds >= 0.2


def test_meter_usage_is_unavailable_inside_the_block_and_the_thread_stops() -> None:
    m = ResourceMeter(interval_s=0.01)
    with m:
        with pytest.raises(RuntimeError):
            _ = m.usage
    assert m._thread is None
    with pytest.raises(ValueError):
        ResourceMeter(interval_s=0)


def test_meter_uses_the_injected_clock_for_wall_time() -> None:
    # Given a clock that reads 100 s at entry and 250 s at exit
    ticks = iter([100.0, 250.0])
    with ResourceMeter(interval_s=10.0, clock=lambda: next(ticks)) as m:
        pass
    # Then the wall time is theirs, not the machine's
    assert m.usage.wall_seconds == 150.0


# -- price -------------------------------------------------------------------------------


def test_price_adds_compute_memory_time_and_opportunity() -> None:
    # Given 1 CPU-hour, a 2 GB peak over 30 minutes, and a 2-point gap at 5,000 predictions/s
    usage = ResourceUsage(cpu_seconds=3600.0, peak_rss_mb=2048.0, wall_seconds=1800.0)
    rates = CostRates(usd_per_cpu_second=0.04 / 3600, usd_per_gb_hour=0.01, usd_per_slot_hour=0.20,
                      value_per_accuracy_point_usd=1e-6)
    # When pricing
    b = price(usage, rates, Opportunity(accuracy_gap_points=2.0, predictions_per_second=5000.0))
    # Then each part follows its formula and the total is their sum
    assert b.compute_usd == pytest.approx(0.04)
    assert b.memory_usd == pytest.approx(2.0 * 0.5 * 0.01)
    assert b.time_usd == pytest.approx(0.5 * 0.20)
    assert b.opportunity_usd == pytest.approx(2.0 * 5000.0 * 1800.0 * 1e-6)  # $18
    assert b.total_usd == pytest.approx(b.compute_usd + b.memory_usd + b.time_usd + b.opportunity_usd)
    assert set(b.to_json()) == {"compute_usd", "memory_usd", "time_usd", "opportunity_usd", "total_usd"}


def test_price_without_opportunity_has_none_and_negative_gaps_cost_nothing() -> None:
    usage = ResourceUsage(cpu_seconds=10.0, peak_rss_mb=100.0, wall_seconds=60.0)
    assert price(usage, CostRates()).opportunity_usd == 0.0
    assert price(usage, CostRates(), Opportunity(-3.0, 5000.0)).opportunity_usd == 0.0


def test_rates_refuse_negative_prices() -> None:
    with pytest.raises(ValueError, match="usd_per_gb_hour"):
        CostRates(usd_per_gb_hour=-1.0)


@settings(max_examples=100, deadline=None)
@given(
    cpu=st.floats(0, 1e6), rss=st.floats(0, 1e6), wall=st.floats(0, 1e6),
    gap=st.floats(0, 100), pps=st.floats(0, 1e5),
)
def test_property_price_is_non_negative_and_sums(cpu: float, rss: float, wall: float, gap: float, pps: float) -> None:
    b = price(ResourceUsage(cpu, rss, wall), CostRates(), Opportunity(gap, pps))
    assert isinstance(b, CostBreakdown)
    parts = (b.compute_usd, b.memory_usd, b.time_usd, b.opportunity_usd)
    assert all(p >= 0 for p in parts)
    assert b.total_usd == pytest.approx(sum(parts))


# -- estimate_cost -------------------------------------------------------------------------


def test_first_run_uses_the_default() -> None:
    assert estimate_cost([], default_usd=3.0) == 3.0


def test_estimate_is_an_exponential_moving_average_oldest_first() -> None:
    # 1.0 -> 0.3*2 + 0.7*1 = 1.3 -> 0.3*4 + 0.7*1.3 = 2.11
    assert estimate_cost([1.0, 2.0, 4.0], default_usd=9.0) == pytest.approx(2.11)
    assert estimate_cost([5.0], default_usd=9.0) == 5.0
    assert estimate_cost([1.0, 3.0], default_usd=9.0, alpha=1.0) == 3.0


def test_estimate_skips_bad_rows_and_checks_alpha() -> None:
    assert estimate_cost([math.nan, -1.0, 2.0, math.inf], default_usd=9.0) == 2.0
    assert estimate_cost([math.nan], default_usd=9.0) == 9.0
    for alpha in (0.0, 1.5):
        with pytest.raises(ValueError):
            estimate_cost([1.0], default_usd=1.0, alpha=alpha)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1000), min_size=1, max_size=50), st.floats(0.01, 1.0))
def test_property_estimate_stays_within_the_past_costs(costs: list[float], alpha: float) -> None:
    e = estimate_cost(costs, default_usd=-1.0, alpha=alpha)
    assert min(costs) - 1e-9 <= e <= max(costs) + 1e-9


# -- read_resources ------------------------------------------------------------------------


def test_read_resources_reads_this_node_even_before_the_store_exists(tmp_path) -> None:
    # Given an artifact root that has not been created yet
    r = read_resources(tmp_path / "not" / "yet")
    # Then the reading comes from its nearest existing parent's filesystem
    assert isinstance(r, ResourceReading)
    assert r.free_memory_mb > 0 and r.free_disk_mb > 0 and r.cpu_load_pct >= 0
