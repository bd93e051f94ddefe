"""The report's plots, as PNG bytes: accuracy over time, cumulative cost, drift over time.

Drawn with matplotlib's Agg backend (no display needed) from ``report.json``'s
own data, so a report can be re-plotted from the JSON alone.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

__all__ = ["accuracy_png", "cost_png", "drift_png", "COLORS"]

COLORS = ("#1f77b4", "#7f7f7f", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_DPI = 100


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _t(s: str) -> datetime:
    return datetime.fromisoformat(s)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _axes(title: str, ylabel: str, height: float = 4.2):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, height))
    ax.set_title(title, loc="left", fontsize=12)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _date_axis(ax) -> None:
    import matplotlib.dates as mdates

    loc = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))


def _warmup(ax, report: dict[str, Any]) -> None:
    start = _t(report["data"]["start"])
    end = _t(report["settings"]["warmup_end"])
    ax.axvspan(start, end, color="#eeeeee", zorder=0, label="warm-up")


def _value_at(series: list[tuple[datetime, float]], when: datetime) -> float | None:
    best = None
    for t, v in series:
        if t <= when:
            best = v
        else:
            break
    return best if best is not None else (series[0][1] if series else None)


_STYLES = ("-", "--", "-.", ":")


def _trailing(timeline: list[dict[str, Any]], min_n: int) -> list[tuple[datetime, float]]:
    """Accuracy at the end of each bin over the trailing bins holding at least ``min_n`` predictions:
    a bin of a few dozen predictions is mostly binomial noise."""
    out: list[tuple[datetime, float]] = []
    window: list[tuple[float, int]] = []
    for b in timeline:
        if not b.get("n"):
            window.clear()  # no prediction (warm-up, or a gap in the data): start afresh
            continue
        window.append((b["accuracy"] * b["n"], b["n"]))
        while len(window) > 1 and sum(n for _, n in window[1:]) >= min_n:
            window.pop(0)
        hits, n = sum(h for h, _ in window), sum(n for _, n in window)
        out.append((_t(b["end"]), hits / n))
    return out


def accuracy_png(report: dict[str, Any]) -> bytes:
    """Accuracy per time bin for each policy; trainings, promotions and rollbacks marked on its line."""
    min_n = 500
    fig, ax = _axes(f"Accuracy over time (trailing {min_n}+ predictions, in steps of {_width_label(report)}), "
                    "with each policy's trainings, promotions and rollbacks", "accuracy")
    _warmup(ax, report)
    lows, highs = [0.45], [0.65]
    for i, (label, p) in enumerate(report["policies"].items()):
        color = COLORS[i % len(COLORS)]
        pts = _trailing(p.get("timeline", []), min_n)
        if not pts:
            continue
        xs, ys = zip(*pts)
        lows.append(min(ys))
        highs.append(max(ys))
        ax.plot(xs, ys, color=color, lw=2.2 if i == 0 else 1.6, ls=_STYLES[i % len(_STYLES)],
                label=f"{label} (mean {p['accuracy']:.3f})" if p.get("accuracy") is not None else label, alpha=0.9)
        for v in p.get("versions", []):
            t = _t(v["trained_at"])
            y = _value_at(pts, t)
            if y is None:
                continue
            ax.plot([t], [y], marker="^", ms=7, color=color, mec="black", mew=0.5, ls="none")
            if v.get("promoted_at"):
                tp = _t(v["promoted_at"])
                ax.plot([tp], [_value_at(pts, tp)], marker="o", ms=8, mfc="none", mec=color, mew=2, ls="none")
            if v.get("rolled_back_at"):
                tr = _t(v["rolled_back_at"])
                ax.plot([tr], [_value_at(pts, tr)], marker="X", ms=9, color="#d62728", mec="black", mew=0.5,
                        ls="none")
    ax.plot([], [], marker="^", color="#555", mec="black", mew=0.5, ls="none", label="trained")
    ax.plot([], [], marker="o", mfc="none", mec="#555", mew=2, ls="none", label="promoted to production")
    ax.plot([], [], marker="X", color="#d62728", mec="black", mew=0.5, ls="none", label="rolled back")
    ax.axhline(0.5, color="black", lw=0.8, ls=":", alpha=0.6)
    ax.set_ylim(max(0.0, min(lows) - 0.03), min(1.0, max(highs) + 0.03))
    _date_axis(ax)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return _png(fig)


def cost_png(report: dict[str, Any]) -> bytes:
    """Cumulative measured training cost per policy (USD)."""
    fig, ax = _axes("Cumulative cost of trainings (measured CPU and memory, priced as in production)", "USD",
                    height=3.6)
    _warmup(ax, report)
    end = _t(report["data"]["end"])
    start = _t(report["data"]["start"])
    for i, (label, p) in enumerate(report["policies"].items()):
        color = COLORS[i % len(COLORS)]
        events = sorted((_t(v["trained_at"]), v.get("cost_usd") or 0.0) for v in p.get("versions", []))
        xs, ys, total = [start], [0.0], 0.0
        for t, c in events:
            xs.append(t)
            ys.append(total)
            total += c
            xs.append(t)
            ys.append(total)
        xs.append(end)
        ys.append(total)
        ax.plot(xs, ys, color=color, lw=1.8, label=f"{label} (${total:.4f}, {p.get('trainings', 0)} trainings)")
        ax.plot([t for t, _ in events], [sum(c for _, c in events[:k + 1]) for k in range(len(events))],
                marker="^", color=color, mec="black", mew=0.5, ls="none")
    ax.set_ylim(bottom=0)
    _date_axis(ax)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return _png(fig)


def drift_png(report: dict[str, Any]) -> bytes:
    """Share of features flagged as drifted over time (KS per feature, Benjamini-Hochberg at alpha 0.05):
    the data against the warm-up rows, and each policy's drift checks against its production version's
    training rows, with the checks that fired the drift trigger marked."""
    fig, ax = _axes("Feature drift over time: share of features that drifted (KS tests, BH-corrected, alpha 0.05)",
                    "share of features", height=3.8)
    _warmup(ax, report)
    dd = report.get("data_drift") or []
    if dd:
        xs = [_t(b["start"]) for b in dd] + [_t(dd[-1]["end"])]
        ys = [b["share_drifted"] or 0.0 for b in dd]
        ax.plot(xs, ys + ys[-1:], color="black", lw=1.6, drawstyle="steps-post", label="data vs the warm-up rows")
    for i, (label, p) in enumerate(report["policies"].items()):
        pts = [(_t(d["time"]), d["share_drifted"] or 0.0, d["drifted"]) for d in p.get("drift", [])]
        if not pts:
            continue
        color = COLORS[i % len(COLORS)]
        ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], color=color, lw=1.0, alpha=0.8,
                label=f"{label}: live sample vs production's training rows")
        hit = [(x, y) for x, y, d in pts if d]
        if hit:
            ax.plot(*zip(*hit), marker="v", ms=6, color=color, mec="black", mew=0.5, ls="none",
                    label=f"{label}: drift trigger fired")
    tops = [b["share_drifted"] or 0.0 for b in dd] + [d["share_drifted"] or 0.0 for p in report["policies"].values()
                                                       for d in p.get("drift", [])]
    ax.set_ylim(-0.01, min(1.02, max([0.25] + [t + 0.05 for t in tops])))
    _date_axis(ax)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return _png(fig)


def _width_label(report: dict[str, Any]) -> str:
    from datetime import timedelta

    from retrain.backtest.durations import format_duration

    p = next(iter(report["policies"].values()), {})
    return format_duration(timedelta(seconds=p.get("timeline_width_s", 3600)))
