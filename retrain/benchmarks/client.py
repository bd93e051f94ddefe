"""What reporting costs the trading app: the time of one ``report_*`` call on its own thread.

The client runs as in production (the background flusher joins, batches and packs
rows beside the calls) with a sender that drops what it is given, because the
broker's latency is the flusher's, never the caller's (``retrain bench ingest``
measures the whole path). Figures, in microseconds:

``report_call_mean_us``
    Each :meth:`~retrain.client.RetrainClient.report` call timed on its own at the
    desk's rate (5,000 calls a second), the flusher running: what one call adds to
    the trading thread (the timer's own ~0.05 us included). Target <= 2 us.
    ``report_call_p99_us`` is its 99th percentile (a call that waits for the GIL
    while the flusher holds it).
``tight_loop_us``
    Mean over a tight loop of ``calls`` calls with no flusher: the call itself.
``tight_loop_with_flusher_us``
    The same loop with the flusher working beside it: as the flusher shares the GIL,
    this is the call plus the flusher's whole per-row work (``flusher_us_per_row``),
    the price per row when the app reports as fast as it can.
``report_prediction_us`` / ``report_outcome_us``
    Tight-loop means of the two-step reporting (no flusher).

Run ``retrain bench client [--json]``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

__all__ = ["run"]

T = 1_767_571_200.0


def _discard(task: str, payload: dict, queue: str, priority: int) -> None:
    pass


def run(calls: int = 1_000_000, paced_s: float = 2.0, rate: float = 5000.0) -> dict[str, Any]:
    import numpy as np

    from retrain.client import RetrainClient

    rng = np.random.default_rng(0)
    pool = rng.normal(size=(1000, 8)).tolist()
    ids = [f"p{i}" for i in range(calls)]

    def client(start: bool) -> RetrainClient:
        return RetrainClient(sender=_discard, batch_size=5000, flush_interval_s=0.2, max_buffer=calls + 1,
                             start=start)

    def tight(c: RetrainClient) -> float:
        report = c.report
        t0 = time.perf_counter_ns()
        for i in range(calls):
            report("direction", ids[i], pool[i % 1000], 1, "1.0.0", 1, 0.001, T)
        return (time.perf_counter_ns() - t0) / calls

    # the call alone, then the flusher's work on what it buffered
    c = client(False)
    alone_ns = tight(c)
    f0 = time.perf_counter_ns()
    c.flush(60)
    flush_ns = (time.perf_counter_ns() - f0) / calls

    c = client(True)
    with_flusher_ns = tight(c)
    c.close(60)

    c = client(False)
    rp, ro = c.report_prediction, c.report_outcome
    half = calls // 2
    t0 = time.perf_counter_ns()
    for i in range(half):
        rp("direction", ids[i], pool[i % 1000], 1, "1.0.0", T)
    t1 = time.perf_counter_ns()
    for i in range(half):
        ro("direction", ids[i], 1, 0.001)
    t2 = time.perf_counter_ns()

    # at the desk's rate, each call timed, the flusher running
    c = client(True)
    report = c.report
    n = int(paced_s * rate)
    samples = []
    period = 1e9 / rate
    start = time.perf_counter_ns()
    for i in range(n):
        due = start + i * period
        while time.perf_counter_ns() < due:
            pass
        a = time.perf_counter_ns()
        report("direction", ids[i], pool[i % 1000], 1, "1.0.0", 1, 0.001, T)
        samples.append(time.perf_counter_ns() - a)
    c.close(30)
    samples.sort()

    return {
        "report_call_mean_us": round(statistics.fmean(samples) / 1000, 3),
        "report_call_p99_us": round(samples[int(0.99 * len(samples))] / 1000, 3),
        "paced_calls": n,
        "paced_rate_per_s": rate,
        "tight_loop_us": round(alone_ns / 1000, 3),
        "tight_loop_with_flusher_us": round(with_flusher_ns / 1000, 3),
        "report_prediction_us": round((t1 - t0) / half / 1000, 3),
        "report_outcome_us": round((t2 - t1) / half / 1000, 3),
        "flusher_us_per_row": round(flush_ns / 1000, 3),
        "calls": calls,
    }
