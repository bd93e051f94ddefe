"""How fast and how right the drift check is: :func:`retrain.core.drift.detect_drift` beside a scipy loop.

The case of BASELINES.md: 20 numeric features x 10,000 rows in the reference
and in the current sample, features 0-4 shifted by 0.2 standard deviations.
Both contenders run in the same process on the same arrays, alternately, and
the median of ``repeats`` runs is reported, so the ratio holds on a noisy
machine even when the absolute times do not.

Run ``python -m retrain.benchmarks.drift`` to print the figures as JSON.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import numpy as np

from retrain.core.drift import detect_drift

__all__ = ["run", "make_data"]


def make_data(seed: int = 0, rows: int = 10_000, features: int = 20, shifted: int = 5, shift: float = 0.2):
    """Reference and current samples; the first ``shifted`` features of the current one moved by ``shift`` sd."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(rows, features))
    cur = rng.normal(size=(rows, features))
    cur[:, :shifted] += shift
    return ref, cur


def run(seed: int = 0, repeats: int = 5) -> dict[str, Any]:
    """Time both, and count what each flags."""
    from scipy import stats

    ref, cur = make_data(seed)
    names = [f"x{j}" for j in range(ref.shape[1])]
    shifted = set(names[:5])

    def ours():
        return detect_drift(ref, cur, names)

    def scipy_loop():
        return [stats.ks_2samp(ref[:, j], cur[:, j]) for j in range(ref.shape[1])]

    ours(), scipy_loop()  # warm up imports and caches
    t_ours, t_scipy = [], []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        report = ours()
        t1 = time.perf_counter_ns()
        ks = scipy_loop()
        t2 = time.perf_counter_ns()
        t_ours.append((t1 - t0) / 1e6)
        t_scipy.append((t2 - t1) / 1e6)
    flagged = set(report.drifted_features)
    scipy_flagged = {names[j] for j, r in enumerate(ks) if r.pvalue < 0.05}
    return {
        "rows": ref.shape[0],
        "features": ref.shape[1],
        "shift_sd": 0.2,
        "drift_ms": round(statistics.median(t_ours), 2),
        "scipy_ks_loop_ms": round(statistics.median(t_scipy), 2),
        "speedup": round(statistics.median(t_scipy) / statistics.median(t_ours), 2),
        "drifted_features": sorted(flagged),
        "false_positives": len(flagged - shifted),
        "missed": len(shifted - flagged),
        "scipy_uncorrected_false_positives": len(scipy_flagged - shifted),
        "psi_of_shifted": [round(report[n].psi, 4) for n in sorted(shifted)],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
