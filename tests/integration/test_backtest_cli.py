"""`retrain backtest` on a CSV with no set-up, and the canary's share decided by the router's hash."""

from __future__ import annotations

import json
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from retrain.backtest import market_data, parse_policy, write_csv
from retrain.backtest.replay import ReplayOptions, replay, template_database
from retrain.cli import main
from retrain.config import load_config, parse_config
from retrain.examples.market import DEFAULT_START, Regime, SyntheticMarket
from retrain.serving import routes_to_canary

FAST = Path(__file__).resolve().parents[1] / "data" / "backtest_fast.toml"


def test_the_command_backtests_a_plain_csv_with_the_default_model(tmp_path, capsys):
    # Given a labelled CSV with a return column and nothing else set up
    csv = write_csv(market_data(days=1.0, rows_per_minute=4, n_features=4), tmp_path / "history.csv")
    out = tmp_path / "bt"
    # When it is backtested with two policies compared to the default one
    code = main(["backtest", str(csv), "--time", "time", "--label", "label", "--return", "ret",
                 "--label-delay", "1m", "--compare", "never,every:12h", "--quiet", "--out", str(out)])
    # Then it prints the comparison and writes the report, the page and its plots
    assert code == 0
    text = capsys.readouterr().out
    assert "every:12h" in text and "report.html" in text
    report = json.loads((out / "report.json").read_text())
    assert list(report["policies"]) == ["auto", "never", "every:12h"]
    assert report["data"]["features"] == ["f0", "f1", "f2", "f3"] and report["settings"]["warmup"] == "6h"
    assert report["model_config"]["model"]["entry_point"] == "retrain.examples.direction:train"
    assert report["policies"]["every:12h"]["retrainings"] == 1 and report["accuracy"] > 0.5
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "Decisions" in html
    for name in ("accuracy.png", "cost.png", "drift.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_takes_the_first_model_of_a_model_file(tmp_path, capsys):
    # Given a CSV with more columns than the model file's features, and the model file
    csv = write_csv(market_data(days=0.5, rows_per_minute=2, n_features=10), tmp_path / "history.csv")
    # When it is backtested with --config (features default to the model's)
    code = main(["backtest", str(csv), "--time", "time", "--label", "label", "--config", str(FAST),
                 "--policy", "never", "--warmup", "3h", "--quiet", "--out", str(tmp_path / "bt")])
    # Then the model's entry point, features and settings are the ones used
    assert code == 0
    report = json.loads((tmp_path / "bt" / "report.json").read_text())
    assert report["settings"]["model"] == "fast" and report["data"]["features"] == [f"f{i}" for i in range(8)]
    assert report["model_config"]["model"]["lookback_hours"] == 8 and report["sharpe"] is None
    assert report["policies"]["never"]["trainings"] == 1


def test_a_bad_column_is_a_clear_error(tmp_path, capsys):
    csv = write_csv(market_data(days=0.1, rows_per_minute=2, n_features=2), tmp_path / "h.csv")
    code = main(["backtest", str(csv), "--time", "time", "--label", "outcome", "--out", str(tmp_path / "o")])
    assert code == 2 and "--label: no column 'outcome'" in capsys.readouterr().err


def test_canary_rows_are_the_ones_the_router_hash_sends_there(tmp_path):
    # Given a model file whose candidates skip shadow and go to a 50 % canary, and a regime change
    raw = load_config(FAST).model_dump(mode="json", exclude={"source"})
    raw["models"]["fast"]["validation"]["shadow_enabled"] = False
    config = parse_config(raw, source="fast, no shadow")
    w = SyntheticMarket(seed=7, n_features=8).weights
    data = market_data(days=1.6, rows_per_minute=2, n_features=8,
                       regimes=[Regime(DEFAULT_START, w[0]), Regime(DEFAULT_START + timedelta(hours=16), w[1])])
    opts = ReplayOptions(label_delay=timedelta(minutes=1), warmup=timedelta(hours=8),
                         sweep_every=timedelta(minutes=30))
    # When auto replays it
    with tempfile.TemporaryDirectory() as tmp:
        out = replay(data, config, "fast", parse_policy("auto"), opts, Path(tmp) / "auto",
                     template_database(Path(tmp)))
        with out.ctx.store.tx() as tx:
            history = tx.aliases.history("fast")
        out.ctx.store.db.dispose()
    canaries = [h for h in history if h.alias == "canary" and h.to_version]
    assert canaries, "no candidate reached the canary stage"
    first = canaries[0]
    version = first.to_version
    promoted = next((h.at for h in history if h.alias == "production" and h.to_version == version), None)
    ended = promoted or next(h.at for h in history if h.alias == "canary" and h.from_version == version)
    in_window = (data.ts >= first.at.timestamp()) & (data.ts < ended.timestamp())
    idx = np.flatnonzero(in_window)
    by_canary = np.array([out.served_by[i] == version for i in idx])
    routed = np.array([routes_to_canary(str(i), 50.0) for i in idx])
    # Then production's rows in the window are never ones the hash sends to the canary
    assert by_canary.any() and (~by_canary).any()
    assert not routed[~by_canary].any()
    # and during the 50 % stage (until the first canary row the hash would not route at 50 %, when
    # the 100 % stage began) the canary served exactly the rows the hash routes there: about half
    extra = np.flatnonzero(by_canary & ~routed)
    stage1 = int(extra[0]) if extra.size else len(idx)
    assert np.array_equal(by_canary[:stage1], routed[:stage1])
    assert stage1 >= 40 and 0.35 < by_canary[:stage1].mean() < 0.65
    assert by_canary[stage1:].all()


def test_run_comparison_gives_the_demo_a_report_and_a_summary(tmp_path):
    # Given nothing but a day's worth of the example's own market
    from retrain.backtest import run_comparison

    # When the demo asks for a comparison
    report, text = run_comparison(policies=("never", "every:4h"), days=0.75, out=tmp_path / "bt")
    # Then it gets the report and a few lines to print
    assert list(report["policies"]) == ["never", "every:4h"] and report["settings"]["model"] == "direction"
    assert report["policies"]["every:4h"]["retrainings"] >= 2
    assert "every:4h" in text and len(text.splitlines()) == 5
    assert (tmp_path / "bt" / "report.html").exists()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sigterm_writes_the_partial_report_and_leaves_no_temporary_folder(tmp_path, jobs):
    import os
    import re
    import signal
    import sys

    from tests.procs import Proc, retrain_env, wait_for

    # Given a backtest of three policies running in its own process, with a temporary folder of its own
    csv = write_csv(market_data(days=3.0, rows_per_minute=4, n_features=4), tmp_path / "history.csv")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "bt"
    env = retrain_env(TMPDIR=str(tmp))
    proc = Proc("backtest", [sys.executable, "-c", "import sys; from retrain.cli import main; sys.exit(main())",
                             "backtest", str(csv), "--time", "time", "--label", "label", "--return", "ret",
                             "--label-delay", "1m", "--compare", "never,every:6h", "--jobs", jobs,
                             "--out", str(out)], env, tmp_path)
    try:
        # When it has replayed a tenth of the way (the progress bar says so), it gets SIGTERM
        def progressed():
            return any(int(p) >= 10 for p in re.findall(r"\]\s+(\d+)%", proc.log()))

        wait_for("10 % of the replay", progressed, timeout=240, procs=[proc])
        os.kill(proc.p.pid, signal.SIGTERM)
        proc.p.wait(timeout=240)
    finally:
        code = proc.stop()
    # Then it exits as a terminated process does, having written what it replayed
    assert code == 143, proc.log()[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["partial"] and report["policies"]
    assert all(p["partial"] for p in report["policies"].values() if p.get("replayed_until") is None
               or p["replayed_until"] < report["data"]["end"])
    assert (out / "report.html").exists() and "partial" in proc.log()
    # and its temporary databases are gone
    assert [p.name for p in tmp.iterdir()] == []



@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_sigterm_once_every_replay_has_finished_waits_for_the_whole_report(tmp_path, monkeypatch, capsys, jobs):
    import os
    import signal

    import retrain.backtest.run as run_mod

    # Given a backtest whose replays have all finished, with a temporary folder of its own
    csv = write_csv(market_data(days=0.5, rows_per_minute=2, n_features=2), tmp_path / "history.csv")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    real_write = run_mod.write_report

    def sigterm_then_write(report, out):
        # When SIGTERM comes just as the report starts to be written
        os.kill(os.getpid(), signal.SIGTERM)
        return real_write(report, out)

    monkeypatch.setattr(run_mod, "write_report", sigterm_then_write)
    code = main(["backtest", str(csv), "--time", "time", "--label", "label", "--compare", "never",
                 "--jobs", jobs, "--quiet", "--out", str(tmp_path / "bt")])
    # Then the report is written in full, the command exits as a terminated process does, and says so
    assert code == 143
    report = json.loads((tmp_path / "bt" / "report.json").read_text())
    assert not report["partial"] and list(report["policies"]) == ["auto", "never"]
    assert (tmp_path / "bt" / "report.html").exists()
    assert "the report is complete" in capsys.readouterr().err
    # and the temporary databases are gone, and SIGTERM is handled as before the command
    assert [p.name for p in tmp.iterdir()] == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

def test_a_model_file_on_a_slow_stream_gets_widened_windows_and_labels_stay_as_written(tmp_path, capsys):
    # Given one row a minute and a model file that says nothing about windows, the sample or the lookback
    csv = write_csv(market_data(days=1.0, rows_per_minute=1, n_features=2), tmp_path / "history.csv")
    model_file = tmp_path / "m.toml"
    model_file.write_text('[models.slow]\nentry_point = "retrain.examples.direction:train"\n'
                          'features = ["f0", "f1"]\n[models.slow.drift]\nmin_rows = 200\n')
    # When it is backtested with --config, comparing policies spelled in days
    code = main(["backtest", str(csv), "--time", "time", "--label", "label", "--config", str(model_file),
                 "--policy", "auto", "--compare", "every:7d,every:30d,every:1w", "--warmup", "6h", "--quiet",
                 "--out", str(tmp_path / "bt")])
    # Then the windows it left out are widened as without --config (from its own sample sizes), and said so
    assert code == 0
    report = json.loads((tmp_path / "bt" / "report.json").read_text())
    model = report["model_config"]["model"]
    assert model["thresholds"]["window_minutes"] == 4320 and model["emergency"]["bucket_minutes"] == 25
    assert model["thresholds"]["min_samples"] == 1440  # a day of outcomes at this rate
    assert model["drift"]["current_minutes"] == 250 and model["drift"]["min_rows"] == 200
    assert report["settings"]["sweep_every"] == "1h"
    assert any("thresholds.window_minutes widened from 240 to 4320" in w for w in report["settings"]["widened"])
    assert "Widened for this stream's rate" in (tmp_path / "bt" / "report.html").read_text()
    # and the policies keep the user's spelling (every:1w is every:7d: run once)
    assert list(report["policies"]) == ["auto", "every:7d", "every:30d"]
    # and the notes say what cannot act at this rate
    assert any("performance trigger cannot fire" in n for n in report["notes"])
