"""The backtest's pure parts: durations, policies, crontab, data loading, the visible-history source."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from retrain.backtest.data import from_arrays, load_data, market_data, write_csv
from retrain.backtest.durations import format_duration, parse_duration
from retrain.backtest.policies import (
    EVERY_OVERRIDES,
    configure,
    default_config,
    parse_policies,
    parse_policy,
    widen_for_rate,
)
from retrain.backtest.source import DATA_SOURCE, PARAM, VisibleHistory, registered, visible_history
from retrain.core.cron import Crontab
from retrain.core.errors import ConfigError, PayloadError

T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)


# -- durations -------------------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("5m", 300), ("6h", 21600), ("1d", 86400), ("1w", 604800),
                                          ("1h30m", 5400), ("45", 45), ("0.5h", 1800), ("0s", 0)])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "abc", "5x", "1d-2h", "-5m", "h"])
def test_bad_durations_name_the_option(text):
    with pytest.raises(ConfigError, match="--warmup"):
        parse_duration(text, "--warmup")


def test_durations_format_compactly():
    assert [format_duration(timedelta(seconds=s)) for s in (0, 60, 3600, 86400, 74940, 90)] == \
        ["0s", "1m", "1h", "1d", "20h49m", "1m30s"]


# -- policies --------------------------------------------------------------------------


def test_policy_labels_parse_and_compare_keeps_the_primary_first_without_repeats():
    specs = parse_policies("auto", "never, every:1d,auto,every:24h,every:7d")
    assert [s.label for s in specs] == ["auto", "never", "every:1d", "every:7d"]
    assert parse_policy("EVERY:12h").period == timedelta(hours=12)


@pytest.mark.parametrize("text", ["every:7d", "every:30d", "every:90m", "every:1h30m", "every:36h", "every:1w"])
def test_policy_labels_stay_as_the_user_wrote_them(text):
    # Given a period that a canonical spelling would rewrite (7d -> 1w, 30d -> 4w2d, 90m -> 1h30m)
    spec = parse_policy(text)
    # Then the label, the report's key, is the user's own
    assert spec.label == text
    # and two spellings of one period are one policy: the first spelling is kept
    assert parse_policy("every:1w") == parse_policy("every:7d")
    assert [s.label for s in parse_policies("every:7d", "every:1w,every:168h")] == ["every:7d"]
    assert parse_policy(" Every: 30d ").label == "every:30d"


@pytest.mark.parametrize("text", ["sometimes", "every:", "every:0s", "every:xyz"])
def test_unknown_policies_are_refused(text):
    with pytest.raises(ConfigError):
        parse_policy(text)


def test_configure_switches_triggers_off_for_never_and_rules_off_for_every():
    # Given the default backtest model file
    base = default_config(("a", "b"), rows_per_minute=10.0, lookback=timedelta(hours=24))
    # When configured for each policy
    auto = configure(base, "backtest", parse_policy("auto"), "tok").model("backtest")
    never = configure(base, "backtest", parse_policy("never"), "tok")
    every = configure(base, "backtest", parse_policy("every:1d"), "tok")
    # Then every policy reads the replay's rows, auto watches everything, the others nothing
    assert auto.data_source == DATA_SOURCE and auto.params[PARAM] == "tok"
    assert auto.thresholds.metrics == ("accuracy",) and auto.drift.enabled and auto.emergency.enabled
    n = never.model("backtest")
    assert n.thresholds.metrics == () and not n.drift.enabled and not n.emergency.enabled
    assert n.schedule.crontab_fields() == {}
    # and every:1d's decision has no cooldown, run limit or off-peak window
    pol = every.policy_for("backtest")
    assert pol.cooldown_hours == 0 and pol.max_runs_per_model_per_day == EVERY_OVERRIDES["max_runs_per_model_per_day"]
    assert pol.offpeak_start is None and never.policy_for("backtest").cooldown_hours == 6.0


def test_default_model_widens_windows_for_slow_streams_with_a_day_of_outcomes():
    fast = default_config(("a",), rows_per_minute=20.0, lookback=timedelta(hours=24)).model("backtest")
    slow = default_config(("a",), rows_per_minute=1.0, lookback=timedelta(hours=12)).model("backtest")
    assert fast.thresholds.window_minutes == 240 and fast.thresholds.min_samples == 2000
    # 1,440 outcomes a day: the performance trigger judges a day of them, in a window of three days
    assert slow.thresholds.window_minutes == 4320 and slow.thresholds.min_samples == 1440
    assert slow.emergency.bucket_minutes == 25 and slow.sample.rate == 1.0
    assert slow.lookback_hours == 12 and slow.entry_point == "retrain.examples.direction:train"


def _model_file(tmp_path, body: str):
    from retrain.config import load_config

    path = tmp_path / "m.toml"
    path.write_text('[models.m]\nentry_point = "retrain.examples.direction:train"\nfeatures = ["a"]\n' + body)
    return load_config(path)


def test_a_model_file_gets_the_windows_widened_for_a_slow_stream_where_it_is_silent(tmp_path):
    # Given a model file that sets the performance window but leaves drift, emergency, sample and lookback alone
    config = _model_file(tmp_path, "[models.m.thresholds]\nwindow_minutes = 360\n")
    # When it is sized for a stream of one row a minute with a 12-hour warm-up
    widened, notes = widen_for_rate(config, "m", rows_per_minute=1.0, lookback=timedelta(hours=12))
    m, default = widened.model("m"), default_config(("a",), 1.0, timedelta(hours=12)).model("backtest")
    # Then what it left at the defaults is widened as without --config, what it set is kept
    assert m.thresholds.window_minutes == 360
    assert (m.drift.current_minutes, m.emergency.bucket_minutes, m.sample.rate) == \
        (default.drift.current_minutes, default.emergency.bucket_minutes, default.sample.rate) == (625, 25, 1.0)
    assert m.lookback_hours == 24  # the default is longer than the warm-up: never narrowed
    assert any("drift.current_minutes widened from 240 to 625" in n for n in notes)
    assert not any("thresholds.window_minutes" in n for n in notes)
    # And on a fast stream nothing changes
    same, none = widen_for_rate(config, "m", rows_per_minute=50.0, lookback=timedelta(hours=12))
    assert same is config and none == []


def test_widening_follows_the_model_files_own_sample_sizes(tmp_path):
    # Given a model file asking for 500 outcomes per window and 100 drift rows, on a daily stream
    config = _model_file(tmp_path, "[models.m.thresholds]\nmin_samples = 500\n[models.m.drift]\nmin_rows = 100\n")
    m = widen_for_rate(config, "m", rows_per_minute=1 / 1440, lookback=timedelta(days=365))[0].model("m")
    # Then the windows hold 1.25 times those sizes at that rate, and the lookback is the warm-up
    assert m.thresholds.window_minutes == 1.25 * 500 * 1440
    assert m.drift.current_minutes == 1.25 * 100 * 1440 and m.lookback_hours == 365 * 24


# -- crontab ---------------------------------------------------------------------------


def test_crontab_fires_the_minutes_of_its_fields_in_the_tick():
    daily = Crontab.from_fields({"minute": "0", "hour": "2"}, "UTC")
    weekly = Crontab.from_fields({"minute": "0", "hour": "2", "day_of_week": "sun"}, "UTC")
    every15 = Crontab.from_fields({"minute": "*/15"}, "UTC")
    # 2026-01-04 is a Sunday
    sunday = datetime(2026, 1, 4, tzinfo=timezone.utc)
    assert daily.fired(sunday + timedelta(hours=1, minutes=55), sunday + timedelta(hours=2))
    assert weekly.fired(sunday + timedelta(hours=1), sunday + timedelta(hours=3))
    assert not weekly.fired(T0, T0 + timedelta(hours=23))  # a Monday
    fired = every15.fired(T0, T0 + timedelta(hours=1))
    assert [t.minute for t in fired] == [15, 30, 45, 0] and fired[-1] == T0 + timedelta(hours=1)


@pytest.mark.parametrize("fields,zone", [({"minute": "0", "hour": "2"}, "Europe/Paris"),
                                         ({"minute": "0,30", "hour": "1-3"}, "America/New_York"),
                                         ({"minute": "30", "hour": "2", "day_of_week": "sun"}, "Europe/Paris"),
                                         ({"minute": "0", "hour": "2", "day_of_month": "31"}, "UTC"),
                                         ({"minute": "*/20"}, "Europe/Paris")])
def test_crontab_next_fire_agrees_with_a_minute_by_minute_scan_across_dst(fields, zone):
    c = Crontab.from_fields(fields, zone)
    for start in (datetime(2026, 3, 20, tzinfo=timezone.utc), datetime(2026, 10, 20, tzinfo=timezone.utc)):
        end = start + timedelta(days=45)
        scan, t = [], start + timedelta(minutes=1)
        while t <= end:
            if c.matches(t):
                scan.append(t)
            t += timedelta(minutes=1)
        assert c.fired(start, end) == scan


def test_crontab_reads_local_time_of_the_zone():
    c = Crontab.from_fields({"minute": "0", "hour": "2"}, "Europe/Paris")  # 02:00 Paris = 01:00 UTC in January
    assert c.fired(T0, T0 + timedelta(hours=2)) == [T0 + timedelta(hours=1)]


# -- data ------------------------------------------------------------------------------


def test_csv_round_trip_with_iso_times_and_default_features(tmp_path):
    # Given a synthetic history written as CSV
    d = market_data(days=0.05, rows_per_minute=2, n_features=3)
    path = write_csv(d, tmp_path / "h.csv")
    # When it is read back with only time and label named
    back = load_data(path, time="time", label="label", ret="ret")
    # Then the other numeric columns are the features and the values survive
    assert back.features == ("f0", "f1", "f2")
    assert np.array_equal(back.ts, d.ts) and np.allclose(back.X, d.X) and np.array_equal(back.y, d.y)
    assert np.allclose(back.ret, d.ret)


def test_csv_with_epoch_milliseconds_unsorted_rows_and_gaps(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("when,x,y,label,note\n"
                 "1767571260000,1.5,2,1,b\n"
                 "1767571200000,0.5,,0,a\n"      # y missing: skipped
                 "1767571320000,2.5,3,true,c\n"
                 "1767571380000,3.5,4,0,d\n")
    d = load_data(p, time="when", label="label")
    assert d.features == ("x", "y")  # 'note' is not numeric
    assert d.ts.tolist() == [1767571260.0, 1767571320.0, 1767571380.0] and d.y.tolist() == [1, 1, 0]
    assert d.skipped == 1


def test_data_errors_name_the_problem(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("t,x,label\n1,0.1,0\n2,0.2,2\n3,0.3,1\n")
    with pytest.raises(PayloadError, match="0 or 1"):
        load_data(p, time="t", label="label")
    with pytest.raises(ConfigError, match="--label: no column 'lab'"):
        load_data(p, time="t", label="lab")
    with pytest.raises(ConfigError, match="no file"):
        load_data(tmp_path / "missing.csv", time="t", label="label")


def test_parquet_is_read_when_pyarrow_is_installed(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    times = [T0 + timedelta(minutes=i) for i in range(5)]
    pq.write_table(pa.table({"t": times, "a": [0.1, 0.2, 0.3, 0.4, 0.5], "label": [0, 1, 0, 1, 1]}),
                   tmp_path / "h.parquet")
    d = load_data(tmp_path / "h.parquet", time="t", label="label")
    assert d.features == ("a",) and d.ts[0] == T0.timestamp() and d.y.tolist() == [0, 1, 0, 1, 1]


# -- no look-ahead at the source -------------------------------------------------------


def test_visible_history_serves_only_rows_whose_labels_are_known():
    # Given rows every minute and labels known 5 minutes after each row
    ts = np.array([T0.timestamp() + 60 * i for i in range(100)])
    data = from_arrays(ts, np.arange(100.0), np.arange(100) % 2, features=["x"])
    hist = VisibleHistory(data, timedelta(minutes=5))
    now = T0 + timedelta(minutes=50)
    # When the data source is read at `now` with a 10-minute lookback
    with registered(hist) as token:
        X, y, t = visible_history(now, timedelta(minutes=10), {PARAM: token})
    # Then it holds exactly the rows with ts in [now - 15m, now - 5m]
    assert t[0] == (now - timedelta(minutes=15)).timestamp() and t[-1] == (now - timedelta(minutes=5)).timestamp()
    assert len(t) == 11 and np.all(t + 300 <= now.timestamp())
    assert hist.reads[-1].newest_ts + 300 <= now.timestamp()


def test_the_source_refuses_to_serve_outside_a_replay():
    with pytest.raises(ConfigError, match="only serves a running backtest"):
        visible_history(T0, timedelta(hours=1), {PARAM: "replay-unknown"})
