"""The backtest report's pure parts: notes on what cannot act at the data's rate, trivial baselines, the
page and plots with thousands of events, rounded durations."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from retrain.backtest.data import from_arrays
from retrain.backtest.durations import human_duration
from retrain.backtest.html import decision_counts, render_html
from retrain.backtest.notes import holdout_rows_needed, outcome_notes, rate_notes
from retrain.backtest.plots import accuracy_png, cost_png, drift_png
from retrain.backtest.policies import default_config
from retrain.backtest.summary import baselines, timeline_width
from retrain.config import parse_config

T0 = datetime(2000, 1, 3, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def _model(rate: float, lookback: timedelta, **sections):
    """The default backtest model at ``rate`` rows a minute, with some sections overridden."""
    base = default_config(("a",), rate, lookback).model("backtest").model_dump(mode="json")
    for name, values in sections.items():
        base[name] = {**base[name], **values}
    return parse_config({"models": {"backtest": base}}).model("backtest")


def _notes(cfg, rate: float, delay: timedelta, span: timedelta, **kw) -> list[str]:
    return rate_notes(cfg, rows_per_minute=rate, label_delay=delay, after_warmup=span,
                      row_gap=timedelta(minutes=1 / rate), **kw)


# -- durations -------------------------------------------------------------------------


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (45, "45s"), (90, "1.5m"), (3600, "1h"), (5400, "1.5h"),
                                          (3_627_648, "42d"), (86400 * 10.6, "11d"), (86400 * 400, "400d"),
                                          (86400 * 3650, "10y")])
def test_human_durations_round_to_one_unit(seconds, text):
    # 3,627,648 s is the "5w4d23h40m48s" of a 20-year timeline's title
    assert human_duration(timedelta(seconds=seconds)) == text


def test_a_long_timeline_gets_a_round_bin_width():
    ts = T0.timestamp() + 86400.0 * np.arange(7305)
    data = from_arrays(ts, np.zeros((7305, 1)), np.arange(7305) % 2)
    width = timeline_width(data)
    assert width in (timedelta(days=56), timedelta(days=91)) and re.fullmatch(r"\d+d", human_duration(width))


# -- notes: settings that cannot act at the data's rate --------------------------------


def test_a_daily_stream_is_told_why_each_gate_and_trigger_cannot_act():
    # Given the default model on one row a day, labels a day late, a year after the warm-up
    rate = 1 / 1440
    cfg = _model(rate, timedelta(days=365))
    notes = _notes(cfg, rate, DAY, timedelta(days=365), accuracy=0.5)
    text = "\n".join(notes)
    # Then the triggers, sized by time for this rate (retrain.core.sizing), can each fire: no note
    assert "cannot fire" not in text
    # while the fast-stream sizes, set in a model file, each get a note naming its fields
    fast = _model(rate, timedelta(days=365), thresholds={"min_samples": 2000, "window_minutes": 240},
                  drift={"min_rows": 500, "current_minutes": 240}, emergency={"history_buckets": 120})
    fast_text = "\n".join(_notes(fast, rate, DAY, timedelta(days=365), accuracy=0.5))
    assert "performance trigger cannot fire: it needs 2,000 outcomes" in fast_text
    assert "drift trigger cannot fire" in fast_text and "emergency detector cannot fire" in fast_text
    # and the live gates, sized by their tests, are said to be replaced by walk-forward (not a dead end)
    live = [n for n in notes if n.startswith("live validation cannot conclude in time")]
    assert len(live) == 1 and re.search(r"shadow needs [\d,]+ paired rows \(what its paired test needs for \+2%", live[0])
    assert "brings about 1 (1 row a day, labels 1d late)" in live[0] and "canary stage at 10% needs" in live[0]
    assert "judged by walk-forward" in live[0] and "no live gate can gather its rows at this rate" in live[0]
    # and the holdout, which only screens before that gate, gets no note
    assert "holdout of about" not in text


def test_without_walk_forward_each_live_gate_that_cannot_conclude_gets_its_own_note():
    rate = 1 / 1440
    cfg = _model(rate, timedelta(days=365), validation={"walk_forward": False, "shadow_min_rows": 1000},
                 rollout={"stage_min_samples": 500})
    text = "\n".join(_notes(cfg, rate, DAY, timedelta(days=365), accuracy=0.5))
    assert re.search(r"shadow needs 1,000 paired rows \(validation.shadow_min_rows\) within its 48 h maximum .* "
                     r"brings about 1 \(1 row a day, labels 1d late\): every candidate .* ends inconclusive", text)
    assert "validation.shadow_enabled = false" in text
    assert "canary stage at 10% needs 500 outcomes (rollout.stage_min_samples)" in text
    # When both live gates are off, the holdout decides alone: its size is checked
    alone = _model(rate, timedelta(days=365), validation={"shadow_enabled": False}, rollout={"enabled": False})
    text = "\n".join(_notes(alone, rate, DAY, timedelta(days=365), accuracy=0.5))
    assert "holdout of about 73 rows" in text and "validation.min_improvement" in text


def test_the_notes_follow_the_settings_not_fixed_numbers():
    rate, span = 1 / 1440, timedelta(days=365)
    # Given shadow and stages sized to what a daily stream brings
    cfg = _model(rate, timedelta(days=365), validation={"shadow_min_rows": 20, "shadow_max_hours": 24 * 30},
                 rollout={"enabled": False})
    notes = "\n".join(_notes(cfg, rate, DAY, span))
    # Then no shadow nor canary note: 20 rows come within 30 days
    assert "shadow needs" not in notes and "canary stage" not in notes
    # and the holdout's need follows min_improvement and confidence
    assert holdout_rows_needed(0.02, 0.55, 0.95) > holdout_rows_needed(0.10, 0.55, 0.95) > 0
    assert holdout_rows_needed(0.02, 0.55, 0.99) > holdout_rows_needed(0.02, 0.55, 0.95)
    # And the 5-minute stream: 48 h brings 575 paired rows, short of 1,000
    five = _model(1 / 5, timedelta(hours=24), validation={"shadow_min_rows": 1000})
    shadow = [n for n in _notes(five, 1 / 5, timedelta(minutes=5), timedelta(days=9)) if "shadow needs" in n]
    assert shadow and "brings about 575" in shadow[0] and "shadow_max_hours >= 84" in shadow[0]


def test_a_fast_stream_with_the_default_settings_gets_no_rate_note():
    cfg = _model(20.0, timedelta(hours=24))
    # 5,760 held-out rows tell a +2 % improvement apart; 48 h of shadow bring 57,000 paired rows
    assert _notes(cfg, 20.0, timedelta(minutes=1), timedelta(days=4), accuracy=0.58) == []


def test_never_is_not_told_about_gates_it_never_meets_and_every_about_its_period():
    rate = 1 / 1440
    cfg = _model(rate, timedelta(days=365), thresholds={"metrics": []}, drift={"enabled": False},
                 emergency={"enabled": False})
    assert _notes(cfg, rate, DAY, timedelta(days=365), retrains=False) == []
    every = _notes(cfg, rate, DAY, timedelta(days=365), every=timedelta(hours=6))
    assert any(n.startswith("every:6h is shorter than the data's usual gap between rows (1d)") for n in every)


def test_outcome_notes_say_what_stood_in_the_way_and_when_the_model_has_no_skill():
    decisions = [{"time": "t", "trigger": "performance", "verdict": "reject", "request": "perf",
                  "reasons": ["roi: 0 < 1.5: benefit $0.00 = 1e-06 x 1 pt x 0 predictions"]}] * 3
    versions = [{"version": "1.0.0", "promoted_at": "t"},
                {"version": "1.1.0", "promoted_at": None, "status": "withdrawn",
                 "validation": "inconclusive after 48.0 h (maximum 48 h)"},
                {"version": "1.2.0", "promoted_at": None, "status": "rejected",
                 "validation": "candidate accuracy 0.5 vs production 0.6 on 58 held-out rows"}]
    p = {"policy": "auto", "decisions": decisions, "versions": versions, "accuracy": 0.49, "predictions": 400}
    base = {"majority": {"label": "majority class (1, the warm-up's)", "accuracy": 0.52}}
    notes = outcome_notes(p, base)
    assert notes[0] == "auto: none of its 3 decisions approved a retraining; what stood in the way: roi 3"
    assert "2 retraining(s), none promoted" in notes[1] and "the holdout check 1" in notes[1]
    assert "does not beat the majority class (1, the warm-up's) baseline (0.5200)" in notes[2]


# -- baselines -------------------------------------------------------------------------


def test_baselines_score_one_class_on_the_policys_own_rows():
    # Given 10 warm-up rows, mostly 0, whose last two labels are not known yet at the warm-up's end
    ts = T0.timestamp() + 60.0 * np.arange(20)
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1] + [1] * 6 + [0] * 4)
    y[8:10] = 1
    ret = np.where(y == 1, 0.01, -0.01)
    data = from_arrays(ts, np.zeros((20, 1)), y, ret)
    warm_end = T0 + timedelta(minutes=10)
    used = np.zeros(20, dtype=bool)
    used[12:20] = True  # the rows the policy predicted
    # When the baselines are scored with a 3-minute label delay (rows 8 and 9 unknown at the warm-up's end)
    b = baselines(data, used, warm_end, timedelta(minutes=3))
    # Then the majority class comes from the known warm-up labels (5 zeros, 3 ones), "always up" is 1
    assert b["majority"]["predicts"] == 0 and b["always_up"]["predicts"] == 1
    assert b["majority"]["accuracy"] == 0.5 and b["always_up"]["accuracy"] == 0.5  # rows 12-19: 4 up, 4 down
    assert b["always_up"]["sharpe"] == pytest.approx(0.0) and b["majority"]["sharpe"] == pytest.approx(0.0)
    # And without returns there is no "always up"
    assert set(baselines(from_arrays(ts, np.zeros((20, 1)), y), used, warm_end)) == {"majority"}


# -- the page and the plots with thousands of events -----------------------------------


def _big_report(decisions: int = 2400, versions: int = 3000, checks: int = 1800, days: int = 7300) -> dict:
    """A report shaped like 20 years of daily rows under every:1d."""
    start = T0
    iso = lambda d: (start + timedelta(days=d)).isoformat()  # noqa: E731
    p = {
        "policy": "every:1d", "accuracy": 0.51, "sharpe": 0.01, "predictions": days - 365, "retrainings": versions - 1,
        "trainings": versions, "promotions": 40, "rollbacks": 0, "cost_usd": 1.5,
        "triggers": {"emergency": 0, "performance": 0, "drift": checks // 2, "manual": 1, "schedule": decisions},
        "baselines": {"majority": {"label": "majority class (1, the warm-up's)", "predicts": 1, "accuracy": 0.52,
                                   "sharpe": 0.02}},
        "skill": -0.01,
        "decisions": [{"time": iso(365 + i * 3), "trigger": "schedule" if i % 3 else "drift",
                       "verdict": ("approve", "reject", "coalesced")[i % 3],
                       "reasons": [f"roi: {i / 1000:.3f} < 1.5: benefit $0.00"] if i % 3 == 1
                       else [f"coalesce: joins active run (1.{i}.0)"] if i % 3 == 2
                       else ["all rules passed (bypassed: roi)"],
                       "request": "fixed schedule", "defer_until": None, "resolved_by": None}
                      for i in range(decisions)],
        "versions": [{"version": f"1.{i}.0", "trained_at": iso(365 + i * 2), "promoted_at": iso(366 + i * 2)
                      if i % 75 == 0 else None, "rejected": i % 75 != 0, "rolled_back": False,
                      "rolled_back_at": None, "status": "production" if i % 75 == 0 else "rejected",
                      "trigger": "schedule", "cost_usd": 0.0005, "holdout_accuracy": 0.5, "data_rows": 292,
                      "data_end": iso(364 + i * 2), "validation": "inconclusive after 48.0 h"}
                     for i in range(versions)],
        "drift": [{"time": iso(365 + i * 3.6), "version": "1.0.0", "drifted": i % 2 == 0, "share_drifted": 0.25,
                   "drifted_features": ["a"], "mean_statistic": 0.1, "max_statistic": 0.2, "rows": 500}
                  for i in range(checks)],
        "accuracy_by_period": [{"start": iso(d), "end": iso(d + 1), "accuracy": 0.5, "n": 1}
                               for d in range(365, days)],
        "timeline": [{"start": iso(d), "end": iso(d + 56), "accuracy": 0.5, "n": 56} for d in range(0, days, 56)],
        "timeline_width_s": 3_627_648.0,
        "notes": ["shadow needs 1,000 paired rows"],
    }
    return {
        "schema_version": 1, "partial": False, "policies_requested": ["every:1d", "never"],
        "data": {"source": "daily.csv", "rows": days, "skipped_rows": 0, "features": ["a"], "start": iso(0),
                 "end": iso(days), "rows_per_minute": 1 / 1440, "has_return": True, "columns": {}},
        "settings": {"model": "backtest", "config": "<backtest default>", "label_delay": "1d", "warmup": "365d",
                     "warmup_end": iso(365), "period": "1d", "sweep_every": "1h", "approve_after": "30m",
                     "widened": []},
        "model_config": {}, "data_drift": [], "elapsed_s": 1.0,
        "policies": {"every:1d": p, "never": {**p, "policy": "never", "decisions": p["decisions"][:1],
                                              "versions": p["versions"][:1], "drift": []}},
    }


def test_the_page_stays_small_with_thousands_of_decisions_and_versions():
    # Given 2,400 decisions, 3,000 versions and 7,000 daily periods
    report = _big_report()
    # When the page is rendered
    html = render_html(report, {})
    # Then it stays small: counts by kind, the last rows, periods merged (report.json keeps everything)
    assert len(html.encode()) < 150_000, len(html)
    assert "2,400 decisions, by trigger, verdict and the rules that stood in the way" in html
    assert "3,000 versions: rejected 2,960, promoted 40" in html
    assert html.count("<tr>") < 300
    assert "periods of 1d each, merged" in html
    # the notes two policies share are said once
    assert html.count("shadow needs 1,000 paired rows") == 1
    counts = decision_counts(report["policies"]["every:1d"]["decisions"])
    assert [(c[0], c[1], c[2], c[3]) for c in counts] == [("drift", "approve", "all rules passed", 800),
                                                         ("schedule", "coalesced", "coalesce", 800),
                                                         ("schedule", "reject", "roi", 800)]


def test_the_plots_count_events_per_bin_and_title_steps_in_a_round_unit(monkeypatch):
    # Given the 20-year report, and a record of what the plots draw
    import matplotlib.axes

    report = _big_report()
    drawn: list[int] = []
    titles: list[str] = []
    real_plot, real_title = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.set_title

    def plot(self, *args, **kw):
        xs = args[0] if args else []
        drawn.append(len(xs) if hasattr(xs, "__len__") else 1)
        return real_plot(self, *args, **kw)

    def set_title(self, label, *args, **kw):
        titles.append(label)
        return real_title(self, label, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", set_title)
    # When the three plots are drawn
    pngs = [accuracy_png(report), cost_png(report), drift_png(report)]
    # Then they are PNGs drawn with a few hundred calls, not one marker per training or drift check
    assert all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert len(drawn) < 60, len(drawn)
    assert "in steps of 42d" in titles[0] and not re.search(r"\dw\dd", titles[0])
    assert any("drift trigger firings per" in t for t in titles)
