"""The backtester end to end: real steps on a simulated clock, over a stream with a known regime change.

The stream is the example's synthetic market (8 features, 2 rows a minute) with
one regime change 48 h in: the model of the first regime falls from ~0.60 to
~0.50. The model file (tests/data/backtest_fast.toml) is the example classifier
with the default decision policy and triggers, shadow and canary stages sized for
a stream this slow, so that five simulated days replay in seconds.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from retrain.backtest import BacktestSettings, from_arrays, market_data, run_backtest
from retrain.backtest.run import ProgressBar
from retrain.examples.market import DEFAULT_START, Regime, SyntheticMarket

FAST = Path(__file__).resolve().parents[1] / "data" / "backtest_fast.toml"
SHIFT = timedelta(hours=48)
DELAY = "1m"


def _stream(days: float, shift: timedelta = SHIFT):
    w = SyntheticMarket(seed=7, n_features=8).weights  # orthogonal directions: the old model is ~0.50 after
    return market_data(days=days, rows_per_minute=2, n_features=8,
                       regimes=[Regime(DEFAULT_START, w[0]), Regime(DEFAULT_START + shift, w[1])])


def _settings(policies, **kw) -> BacktestSettings:
    return BacktestSettings(policies=policies, config=FAST, label_delay=DELAY, warmup="12h", sweep_every="1h", **kw)


@pytest.fixture(scope="module")
def comparison():
    data = _stream(days=5)
    return data, run_backtest(data, _settings(("auto", "never", "every:1d")))


def _after(report_policy: dict, when: datetime) -> float:
    """Accuracy over the periods that start at or after ``when``."""
    hits = n = 0
    for b in report_policy["accuracy_by_period"]:
        if datetime.fromisoformat(b["start"]) >= when and b["n"]:
            hits += b["accuracy"] * b["n"]
            n += b["n"]
    return hits / n


def _comparable(p: dict) -> dict:
    """A policy's report without what the machine measures (costs, timings)."""
    p = json.loads(json.dumps(p))
    for key in ("cost_usd", "elapsed_s"):
        p.pop(key, None)
    for v in p["versions"]:
        v.pop("cost_usd", None)
    return p


def test_auto_keeps_accuracy_above_never_after_the_change_and_spends_less_than_every_day(comparison):
    # Given five days with a regime change at +48 h, replayed under auto, never and every:1d
    data, report = comparison
    pols = report["policies"]
    change = DEFAULT_START + SHIFT
    # Then after the change auto recovers while never stays near a coin flip
    auto_after, never_after = _after(pols["auto"], change), _after(pols["never"], change)
    assert never_after < 0.53
    assert auto_after > never_after + 0.03, (auto_after, never_after)
    # And auto retrained because of the change, not on a timetable, so it spent less than every:1d
    assert pols["never"]["retrainings"] == 0 and pols["never"]["trainings"] == 1
    assert pols["every:1d"]["retrainings"] == 4
    assert 1 <= pols["auto"]["retrainings"] < pols["every:1d"]["retrainings"]
    assert 0 < pols["auto"]["cost_usd"] < pols["every:1d"]["cost_usd"]
    fired = pols["auto"]["triggers"]
    assert fired["performance"] + fired["emergency"] + fired["drift"] >= 1
    first_retrain = min(datetime.fromisoformat(v["trained_at"]) for v in pols["auto"]["versions"][1:])
    assert first_retrain >= change


def test_the_report_has_the_documented_schema(comparison):
    data, report = comparison
    keys = {"policy", "rows", "accuracy", "accuracy_by_period", "sharpe", "retrainings", "cost_usd", "triggers",
            "decisions", "versions"}
    assert keys <= set(report) and report["policy"] == "auto" and report["schema_version"] == 1
    assert list(report["policies"]) == ["auto", "never", "every:1d"] and not report["partial"]
    for p in report["policies"].values():
        assert keys <= set(p) and p["rows"] == len(data) and p["sharpe"] is not None
        assert set(p["triggers"]) == {"emergency", "performance", "drift", "manual", "schedule"}
        assert all({"start", "end", "accuracy", "n"} <= set(b) for b in p["accuracy_by_period"])
        assert all({"time", "trigger", "verdict", "reasons"} <= set(d) for d in p["decisions"])
        assert all({"version", "trained_at", "promoted_at", "rejected", "rolled_back"} <= set(v)
                   for v in p["versions"])
    # every:1d's requests were approved by the real decision, with the budget override it carries
    every = [d for d in report["policies"]["every:1d"]["decisions"] if d["trigger"] == "schedule"]
    assert len(every) == 4 and all(d["verdict"] == "approve" for d in every)
    assert all("budget_daily" in d["reasons"][0] for d in every)


def test_no_training_saw_a_label_before_it_was_due(comparison):
    # Every version's newest training row had its label visible when the version was trained
    _, report = comparison
    for p in report["policies"].values():
        for v in p["versions"]:
            assert datetime.fromisoformat(v["data_end"]) + timedelta(minutes=1) <= \
                datetime.fromisoformat(v["trained_at"])


def test_a_label_planted_in_the_future_changes_nothing_before_it_is_due(comparison):
    # Given the same stream with every label (and return) flipped from just after the first
    # retraining's label cutoff onwards
    data, report = comparison
    auto = report["policies"]["auto"]
    t1 = sorted(datetime.fromisoformat(v["trained_at"]) for v in auto["versions"])[1]
    cutoff = t1.timestamp() - 60  # labels of rows after this are not visible at t1
    planted = data.ts > cutoff
    y = np.where(planted, 1 - data.y, data.y)
    ret = np.where(planted, -data.ret, data.ret)
    # (rows more than a day after t1 cannot matter to anything up to t1: leave them out to save time)
    keep = data.ts <= t1.timestamp() + 86400
    twin = from_arrays(data.ts[keep], data.X[keep], y[keep], ret[keep], features=data.features, source="planted")
    # When auto replays it
    p2 = run_backtest(twin, _settings(("auto",)))["policies"]["auto"]

    # Then every decision and every training up to t1 (the retraining included) is the same
    before = [d for d in auto["decisions"] if datetime.fromisoformat(d["time"]) <= t1]
    assert before and before == [d for d in p2["decisions"] if datetime.fromisoformat(d["time"]) <= t1]
    v1 = [{k: v[k] for k in ("version", "trained_at", "data_rows", "data_end", "holdout_accuracy", "trigger")}
          for v in auto["versions"] if datetime.fromisoformat(v["trained_at"]) <= t1]
    v2 = [{k: v[k] for k in ("version", "trained_at", "data_rows", "data_end", "holdout_accuracy", "trigger")}
          for v in p2["versions"] if datetime.fromisoformat(v["trained_at"]) <= t1]
    assert len(v1) == 2 and v1 == v2
    # and so are the accuracy figures of the days that ended before the planted labels
    same_days = [b for b in auto["accuracy_by_period"] if datetime.fromisoformat(b["end"]).timestamp() <= cutoff]
    assert same_days and same_days == p2["accuracy_by_period"][:len(same_days)]


def test_the_same_input_gives_the_same_report(comparison):
    # Given the fixture's run, When auto replays the same rows again, Then all but measured costs agree
    data, report = comparison
    again = run_backtest(data, _settings(("auto",)))
    assert _comparable(again["policies"]["auto"]) == _comparable(report["policies"]["auto"])
    assert again["data_drift"] == report["data_drift"]


def test_ctrl_c_stops_cleanly_and_writes_a_partial_report(tmp_path):
    # Given a progress bar that is interrupted half-way through the first policy
    class Interrupting(ProgressBar):
        def __call__(self, label, fraction, now, trainings):
            if fraction >= 0.5:
                raise KeyboardInterrupt
            super().__call__(label, fraction, now, trainings)

    data = _stream(days=1.5)
    bar = Interrupting(2, out=open(tmp_path / "progress.txt", "w"))
    # When the backtest runs
    report = run_backtest(data, _settings(("auto", "never"), jobs=1), out=tmp_path / "out", progress=bar)
    bar.out.close()
    # Then it stops, says so, and writes what it has
    assert report["partial"] and report["policies"]["auto"]["partial"] and "never" not in report["policies"]
    assert datetime.fromisoformat(report["replayed_until"]) < data.end
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["partial"] and (tmp_path / "out" / "report.html").exists()
    assert "%" in (tmp_path / "progress.txt").read_text()


def test_policies_side_by_side_give_the_same_report_as_one_after_the_other():
    # Given a short stream and three policies
    data = _stream(days=2.5, shift=timedelta(hours=30))
    # When they are replayed one after the other, then two at a time in their own processes
    one = run_backtest(data, _settings(("auto", "never", "every:12h"), jobs=1))
    two = run_backtest(data, _settings(("auto", "never", "every:12h"), jobs=2))
    # Then the report is the same, in the order asked for
    assert list(two["policies"]) == list(one["policies"]) == ["auto", "never", "every:12h"]
    for label in one["policies"]:
        assert _comparable(two["policies"][label]) == _comparable(one["policies"][label]), label
    assert two["policies"]["every:12h"]["retrainings"] >= 2


def test_ctrl_c_stops_policies_running_side_by_side_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    import tempfile

    # Given a progress bar interrupted at a third of the run, and a temporary folder of our own
    class Interrupting(ProgressBar):
        def __call__(self, label, fraction, now, trainings):
            super().__call__(label, fraction, now, trainings)
            if sum(self._done.values()) / self.total >= 0.3:
                raise KeyboardInterrupt

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    data = _stream(days=2)
    bar = Interrupting(2, out=open(tmp_path / "progress.txt", "w"))
    # When two policies replay side by side
    report = run_backtest(data, _settings(("auto", "every:6h"), jobs=2), out=tmp_path / "out", progress=bar)
    bar.out.close()
    # Then a policy still running stops where it was (on a loaded machine the other may have finished
    # before the interrupt: its report is whole), the report says so, and the temporary databases are gone
    assert report["partial"] and set(report["policies"]) == {"auto", "every:6h"}
    stopped = [p for p in report["policies"].values() if p["partial"]]
    assert stopped
    for p in stopped:
        assert datetime.fromisoformat(p["replayed_until"]) < data.end
    assert json.loads((tmp_path / "out" / "report.json").read_text())["partial"]
    assert list((tmp_path / "tmp").iterdir()) == []


def _busy_daily_model():
    """A model file for a daily stream where every gate and timer can act: deferrals (cooldown, off-peak
    schedule), a shadow with minimum and maximum hours, canary stages, the first week's approval."""
    from retrain.config import parse_config

    return parse_config({"settings": {"timezone": "UTC"}, "models": {"d": {
        "entry_point": "retrain.examples.direction:train", "features": ["ret_1d", "ret_5d", "vol_20d", "z_1d"],
        "lookback_hours": 24 * 60,
        "thresholds": {"min_samples": 20, "window_minutes": 1440 * 40},
        "drift": {"min_rows": 20, "current_minutes": 1440 * 30},
        "emergency": {"bucket_minutes": 1440 * 3, "min_samples": 2, "history_buckets": 10},
        "validation": {"shadow_min_hours": 24, "shadow_max_hours": 96, "shadow_min_rows": 3,
                       "holdout_fraction": 0.3, "min_improvement": 0.0},
        "rollout": {"stages": [50.0, 100.0], "stage_min_minutes": 60, "stage_min_samples": 1,
                    "stage_max_minutes": 2880},
        "schedule": {"daily": "12:00"},
        "policy": {"cooldown_hours": 30, "max_runs_per_model_per_day": 5},
    }}}, source="busy daily model")


def test_skipping_the_ticks_where_nothing_can_happen_changes_no_result(tmp_path):
    import tempfile

    from retrain.backtest import parse_policy
    from retrain.backtest.replay import ReplayOptions, replay, template_database
    from retrain.backtest.summary import policy_report
    from retrain.backtest.synthetic import daily_history

    # Given five months of daily rows and a model whose gates and timers all act on a daily stream
    data = daily_history(years=0.45)
    config = _busy_daily_model()
    dense = ReplayOptions(label_delay=timedelta(days=1), warmup=timedelta(days=60), sweep_every=timedelta(hours=4),
                          skip_idle=False)
    sparse = ReplayOptions(**{**dense.__dict__, "skip_idle": True})
    # When each policy replays every tick of the grid, then only the ticks where something can happen
    for policy in ("auto", "every:3d", "never"):
        reports = []
        for opts in (dense, sparse):
            with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
                out = replay(data, config, "d", parse_policy(policy), opts, Path(tmp) / "w",
                             template_database(Path(tmp)))
                try:
                    reports.append(policy_report(data, out, opts))
                finally:
                    out.ctx.store.db.dispose()
        # Then the reports agree in every decision, version, drift check and prediction
        assert _comparable(reports[1]) == _comparable(reports[0]), policy
        assert reports[0]["trainings"] >= 2 or policy == "never"
