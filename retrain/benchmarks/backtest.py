"""How fast the backtester is: 10,000 rows x 20 features, ``auto`` compared with ``never`` and ``every:1d``.

``retrain bench backtest [--json]`` writes the rows as a CSV in a temporary
directory and times the whole command as an operator runs it (read the CSV,
replay the three policies each in its own SQLite database through the real
steps, write report.json, report.html and the plots), in this process, with the
default model and policy. Target (issue 8): under 60 s on 2 cores.

The rows are the example's synthetic market with 20 features at 2 rows a minute,
so 10,000 rows cover 3.5 days and include the regime change at +36 h: the replay
does real work (triggers fire, decisions, trainings, shadow, canary stages). The
cost of a replay grows with the simulated span (sweeps), far less with the rows.

Keys: ``rows``, ``features``, ``span_hours``, ``policies``, ``seconds`` (the whole
command), ``replay_s_<policy>`` (each replay), ``trainings_<policy>``,
``accuracy_<policy>``, ``target_s``.

Run ``python -m retrain.benchmarks.backtest`` to print the figures as JSON.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["run"]


def run(rows: int = 10_000, features: int = 20, rows_per_minute: int = 2,
        policies: tuple[str, ...] = ("auto", "never", "every:1d")) -> dict[str, Any]:
    from retrain.backtest import BacktestSettings, load_data, market_data, run_backtest, write_csv
    from retrain.core.clock import monotonic

    data = market_data(days=rows / rows_per_minute / 1440.0, rows_per_minute=rows_per_minute, n_features=features)
    with tempfile.TemporaryDirectory(prefix="retrain-bench-backtest-") as tmp:
        csv = write_csv(data, Path(tmp) / "history.csv")
        t0 = monotonic()
        loaded = load_data(csv, time="time", label="label", ret="ret")
        report = run_backtest(loaded, BacktestSettings(policies=policies, label_delay="1m"), out=Path(tmp) / "out")
        seconds = monotonic() - t0
    out: dict[str, Any] = {"rows": len(loaded), "features": len(loaded.features),
                           "span_hours": round(loaded.span.total_seconds() / 3600, 1), "policies": ",".join(policies),
                           "seconds": round(seconds, 2), "target_s": 60.0}
    for label, p in report["policies"].items():
        key = label.replace(":", "_")
        out[f"replay_s_{key}"] = p["elapsed_s"]
        out[f"trainings_{key}"] = p["trainings"]
        out[f"accuracy_{key}"] = p["accuracy"]
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
