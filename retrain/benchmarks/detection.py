"""How soon and how falsely the performance trigger fires, beside River's ADWIN.

A stream of hits (1 = correct prediction): accuracy 0.60 for ``stable``
outcomes, then 0.50 for ``after`` outcomes. Each detector is fed one outcome
at a time. A firing in the stable part is a false alarm, after which the
detector starts afresh (ADWIN is re-created; :class:`PerformanceDetector`
resets itself); the delay is the number of outcomes after the change up to
and including the first firing (None if it never fires). Repeated over
``seeds`` seeds; medians are reported with the per-seed figures.

ADWIN (``river.drift.ADWIN(delta=0.002)``, the peer in BASELINES.md: median
delay 559, no false alarm in 50,000 stable samples) is imported inside
:func:`run`: River is an optional benchmark dependency.

Run ``python -m retrain.benchmarks.detection`` to print the figures as JSON.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from retrain.core.triggers import PerformanceDetector, PerformanceTriggerConfig

__all__ = ["run", "make_stream"]


def make_stream(seed: int, stable: int, after: int, before_acc: float = 0.60, after_acc: float = 0.50) -> list[int]:
    rng = np.random.default_rng(seed)
    return np.r_[rng.random(stable) < before_acc, rng.random(after) < after_acc].astype(int).tolist()


def _watch(stream: list[int], stable: int, new: Callable[[], Any], feed: Callable[[Any, int], bool]):
    """False alarms in the stable part and the delay after it, re-creating the detector after a firing."""
    det = new()
    false_alarms, delay = 0, None
    t0 = time.perf_counter_ns()
    for i, x in enumerate(stream):
        if feed(det, x):
            if i < stable:
                false_alarms += 1
                det = new()
            else:
                delay = i - stable + 1
                break
    seconds = (time.perf_counter_ns() - t0) / 1e9
    return false_alarms, delay, (i + 1) / seconds


def _median(xs: list[float | None]) -> float | None:
    known = [x for x in xs if x is not None]
    return float(statistics.median(known)) if known else None


def run(seed: int = 0, stable: int = 100_000, after: int = 5_000, seeds: int = 10) -> dict[str, Any]:
    """Delays and false alarms of :class:`PerformanceDetector` and of ADWIN on the same streams."""
    from river.drift import ADWIN

    cfg = PerformanceTriggerConfig()
    ours, adwin = [], []
    for s in range(seed, seed + seeds):
        stream = make_stream(s, stable, after)
        ours.append(
            _watch(
                stream,
                stable,
                lambda: PerformanceDetector({"accuracy": 0.60}, cfg),
                # Labels all 1, so the prediction is the hit: y_pred == y_true exactly when correct.
                lambda d, x: d.update(1, x).drift_detected,
            )
        )
        adwin.append(_watch(stream, stable, lambda: ADWIN(delta=0.002), lambda d, x: d.update(x) or d.drift_detected))
    return {
        "stable": stable,
        "after": after,
        "seeds": seeds,
        "delay_samples": _median([o[1] for o in ours]),
        "false_alarms": _median([o[0] for o in ours]),
        "false_alarms_total": sum(o[0] for o in ours),
        "missed": sum(o[1] is None for o in ours),
        "adwin_delay_samples": _median([a[1] for a in adwin]),
        "adwin_false_alarms": _median([a[0] for a in adwin]),
        "adwin_false_alarms_total": sum(a[0] for a in adwin),
        "adwin_missed": sum(a[1] is None for a in adwin),
        "per_seed": {
            "delay": [o[1] for o in ours],
            "adwin_delay": [a[1] for a in adwin],
            "false_alarms": [o[0] for o in ours],
            "adwin_false_alarms": [a[0] for a in adwin],
        },
        "updates_per_s": round(_median([o[2] for o in ours]) or 0),
        "adwin_updates_per_s": round(_median([a[2] for a in adwin]) or 0),
        "config": {"relative_drop": cfg.relative_drop, "arl0": cfg.arl0, "drop_multiples": list(cfg.drop_multiples)},
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
