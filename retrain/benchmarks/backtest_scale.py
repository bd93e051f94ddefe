"""How fast the backtester is on long and dense histories (issue 14): rows/s and trainings/s.

Two shapes, each generated here (seeded, no download) and backtested in this
process with the default model and policy, as ``retrain backtest`` would on a CSV:

``daily``
    20 years of daily closes (one row per calendar day, 7,305 rows), features
    lagged returns and volatility, label "next day up", the next day's return;
    a momentum that turns into mean reversion half-way. ``--label-delay 1d
    --warmup 365d``, policies ``auto, never, every:1d, every:7d``.
    Target: under 120 s on 2 cores.
``minute``
    100,000 rows a minute apart (69 days), 4 features, the weights linking
    features and label flipped half-way. ``--label-delay 1m``, policies
    ``auto, never, every:1d``. Target: under 180 s on 2 cores.

Keys per shape ``<shape>.``: ``rows``, ``policies``, ``seconds`` (the whole
run: replays, report.json, report.html and plots), ``target_s``, ``rows_per_s``
(rows x policies / seconds), ``trainings``, ``trainings_per_s``, and per policy
``replay_s.<policy>`` and ``trainings.<policy>``.

``python -m retrain.benchmarks.backtest_scale [daily|minute] [--jobs N] [--size S] [--profile FILE]``
runs one shape (both by default; ``retrain bench backtest_scale`` runs both at full size);
``--jobs`` as ``retrain backtest --jobs``; ``--size`` a shorter history (years of the daily
shape, rows of the minute shape); ``--profile`` writes cProfile stats of a run in one
process. ``cpu_s`` is the CPU time of this process and of the policies' processes: on a
loaded machine it says more than ``seconds``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from retrain.backtest.synthetic import daily_history, minute_history

__all__ = ["run", "run_shape", "SHAPES"]

SHAPES: dict[str, dict[str, Any]] = {
    "daily": {"data": daily_history, "policies": ("auto", "never", "every:1d", "every:7d"),
              "label_delay": "1d", "warmup": "365d", "target_s": 120.0},
    "minute": {"data": minute_history, "policies": ("auto", "never", "every:1d"),
               "label_delay": "1m", "warmup": None, "target_s": 180.0},
}


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the policies' processes)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_shape(shape: str, out: Path | None = None, jobs: int | None = None,
              size: float | None = None) -> dict[str, Any]:
    """One shape; ``size``: years of the daily shape, rows of the minute shape (default the target's)."""
    from retrain.backtest import BacktestSettings, run_backtest
    from retrain.core.clock import monotonic

    spec = SHAPES[shape]
    data = spec["data"]() if size is None else spec["data"](size if shape == "daily" else int(size))
    settings = BacktestSettings(policies=spec["policies"], label_delay=spec["label_delay"], warmup=spec["warmup"],
                                jobs=jobs)
    with tempfile.TemporaryDirectory(prefix="retrain-bench-scale-") as tmp:
        cpu0 = _cpu_s()
        t0 = monotonic()
        report = run_backtest(data, settings, out=out or Path(tmp) / "out")
        seconds = monotonic() - t0
        cpu = _cpu_s() - cpu0
    pols = report["policies"]
    trainings = sum(p.get("trainings", 0) for p in pols.values())
    res: dict[str, Any] = {"rows": len(data), "policies": ",".join(spec["policies"]), "seconds": round(seconds, 2),
                           "cpu_s": round(cpu, 2), "target_s": spec["target_s"],
                           "rows_per_s": round(len(data) * len(pols) / seconds, 1),
                           "trainings": trainings, "trainings_per_s": round(trainings / seconds, 2)}
    for label, p in pols.items():
        res[f"replay_s.{label}"] = p.get("elapsed_s")
        res[f"trainings.{label}"] = p.get("trainings")
        res[f"accuracy.{label}"] = p.get("accuracy")
    return res


def run() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for shape in SHAPES:
        for k, v in run_shape(shape).items():
            out[f"{shape}.{k}"] = v
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    prof = jobs = None
    if "--profile" in args:  # one process (jobs 1), so that the profile sees every replay
        i = args.index("--profile")
        prof = args[i + 1]
        del args[i:i + 2]
    if "--jobs" in args:
        i = args.index("--jobs")
        jobs = int(args[i + 1])
        del args[i:i + 2]
    size = None
    if "--size" in args:
        i = args.index("--size")
        size = float(args[i + 1])
        del args[i:i + 2]
    for s in args or list(SHAPES):
        if prof:
            import cProfile

            cProfile.run(f"print(json.dumps(run_shape({s!r}, jobs=1, size={size!r}), indent=2))", f"{prof}.{s}")
        else:
            print(json.dumps(run_shape(s, jobs=jobs, size=size), indent=2), flush=True)
