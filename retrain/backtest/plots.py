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
# More versions than this on one policy: counted per time bin below the plot, not marked one by one.
_MAX_MARKERS = 40
# More drift checks than this: their share is averaged per time bin.
_MAX_POINTS = 300
_COUNT_BINS = 100
# Round bin widths in seconds: minutes, hours, days, weeks, then 30-day months and years.
_ROUND_S = tuple(float(x) for x in (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 2 * 86400,
                                    7 * 86400, 14 * 86400, 30 * 86400, 61 * 86400, 91 * 86400, 182 * 86400,
                                    365 * 86400))


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


def _warmup(ax, report: dict[str, Any], label: str | None = "warm-up") -> None:
    start = _t(report["data"]["start"])
    end = _t(report["settings"]["warmup_end"])
    ax.axvspan(start, end, color="#eeeeee", zorder=0, label=label)


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


def _bin_edges(report: dict[str, Any], bins: int = _COUNT_BINS) -> tuple[list[datetime], str]:
    """About ``bins`` equal time bins over the data's span, with a round width, and its label."""
    from datetime import timedelta

    from retrain.backtest.durations import human_duration

    start, end = _t(report["data"]["start"]), _t(report["data"]["end"])
    span = max((end - start).total_seconds(), 60.0)
    need = span / bins
    width = next((w for w in _ROUND_S if w >= need), need)
    n = int(span // width) + 1
    return [start + timedelta(seconds=i * width) for i in range(n + 1)], human_duration(timedelta(seconds=width))


def _counts(times: list[datetime], edges: list[datetime]) -> list[int]:
    import bisect

    out = [0] * (len(edges) - 1)
    for t in times:
        i = bisect.bisect_right(edges, t) - 1
        if 0 <= i < len(out):
            out[i] += 1
    return out


def _count_panel(ax, edges: list[datetime], series: list[tuple[str, str, list[datetime]]], what: str,
                 width: str) -> None:
    """Events per time bin, one step line per policy: readable with thousands of events."""
    top = 0
    for label, color, times in series:
        c = _counts(times, edges)
        top = max([top, *c])
        ax.step(edges[:-1] + [edges[-1]], c + c[-1:], where="post", color=color, lw=1.4, label=label)
    ax.set_ylabel(f"{what}\nper {width}", fontsize=9)
    ax.set_ylim(0, max(1, top) * 1.15)
    ax.grid(True, alpha=0.3)


def accuracy_png(report: dict[str, Any]) -> bytes:
    """Accuracy per time bin for each policy; below, trainings and promotions per time bin. With at most
    ``_MAX_MARKERS`` versions a policy's trainings, promotions and rollbacks are also marked on its line."""
    min_n = 500
    plt = _plt()
    fig, (ax, low) = plt.subplots(2, 1, figsize=(11, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    edges, width = _bin_edges(report)
    ax.set_title(f"Accuracy over time (trailing {min_n}+ predictions, in steps of {_width_label(report)}); below, "
                 f"trainings per {width}", loc="left", fontsize=12)
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    _warmup(ax, report)
    _warmup(low, report, label=None)
    lows, highs = [0.45], [0.65]
    series = []
    marked = False
    for i, (label, p) in enumerate(report["policies"].items()):
        color = COLORS[i % len(COLORS)]
        versions: list[dict[str, Any]] = p.get("versions", [])
        series.append((label, color, [_t(v["trained_at"]) for v in versions]))
        promoted = [_t(v["promoted_at"]) for v in versions if v.get("promoted_at")]
        if promoted and len(versions) > _MAX_MARKERS:
            c = _counts(promoted, edges)
            xs = [edges[k] for k, n in enumerate(c) if n]
            low.plot(xs, [n for n in c if n], marker="o", ms=6, mfc="none", mec=color, mew=1.6, ls="none")
        pts = _trailing(p.get("timeline", []), min_n)
        if not pts:
            continue
        times, ys = zip(*pts)
        lows.append(min(ys))
        highs.append(max(ys))
        ax.plot(times, ys, color=color, lw=2.2 if i == 0 else 1.6, ls=_STYLES[i % len(_STYLES)],
                label=f"{label} (mean {p['accuracy']:.3f})" if p.get("accuracy") is not None else label, alpha=0.9)
        if len(versions) > _MAX_MARKERS:
            continue  # the panel below counts them
        marked = True
        for v in versions:
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
    first: dict[str, Any] = next(iter(report["policies"].values()), {})
    for name, b in (first.get("baselines") or {}).items():
        if b.get("accuracy") is not None:
            ax.axhline(b["accuracy"], color="#555", lw=1.0, ls=(0, (1, 3)) if name == "majority" else (0, (5, 3)),
                       label=f"baseline: {b['label']} ({b['accuracy']:.3f})")
            lows.append(b["accuracy"])
            highs.append(b["accuracy"])
    if marked:
        ax.plot([], [], marker="^", color="#555", mec="black", mew=0.5, ls="none", label="trained")
        ax.plot([], [], marker="o", mfc="none", mec="#555", mew=2, ls="none", label="promoted to production")
        ax.plot([], [], marker="X", color="#d62728", mec="black", mew=0.5, ls="none", label="rolled back")
    ax.axhline(0.5, color="black", lw=0.8, ls=":", alpha=0.6)
    ax.set_ylim(max(0.0, min(lows) - 0.03), min(1.0, max(highs) + 0.03))
    _count_panel(low, edges, series, "trainings", width)
    low.plot([], [], marker="o", mfc="none", mec="#555", mew=1.6, ls="none", label="promotions (when many)")
    _date_axis(low)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    low.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
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
        if len(events) <= _MAX_MARKERS:  # many trainings: the staircase says it, markers would hide it
            ax.plot([t for t, _ in events], ys[2::2][:len(events)], marker="^", color=color, mec="black", mew=0.5,
                    ls="none")
    ax.set_ylim(bottom=0)
    _date_axis(ax)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return _png(fig)


def drift_png(report: dict[str, Any]) -> bytes:
    """Share of features flagged as drifted over time (KS per feature, Benjamini-Hochberg at alpha 0.05):
    the data against the warm-up rows, and each policy's drift checks against its production version's
    training rows (averaged per time bin when there are many); below, the checks that fired the drift
    trigger, counted per time bin."""
    plt = _plt()
    fig, (ax, low) = plt.subplots(2, 1, figsize=(11, 5.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    edges, width = _bin_edges(report)
    ax.set_title("Feature drift over time: share of features that drifted (KS tests, BH-corrected, alpha 0.05); "
                 f"below, drift trigger firings per {width}", loc="left", fontsize=12)
    ax.set_ylabel("share of features")
    ax.grid(True, alpha=0.3)
    _warmup(ax, report)
    _warmup(low, report, label=None)
    dd = report.get("data_drift") or []
    if dd:
        xs = [_t(b["start"]) for b in dd] + [_t(dd[-1]["end"])]
        ys = [b["share_drifted"] or 0.0 for b in dd]
        ax.plot(xs, ys + ys[-1:], color="black", lw=1.6, drawstyle="steps-post", label="data vs the warm-up rows")
    series = []
    tops = [b["share_drifted"] or 0.0 for b in dd]
    for i, (label, p) in enumerate(report["policies"].items()):
        checks = [(_t(d["time"]), d["share_drifted"] or 0.0, d["drifted"]) for d in p.get("drift", [])]
        if not checks:
            continue
        color = COLORS[i % len(COLORS)]
        series.append((label, color, [x for x, _, fired in checks if fired]))
        if len(checks) > _MAX_POINTS:  # a mean per bin: thousands of checks make a solid band otherwise
            sums = [0.0] * (len(edges) - 1)
            ns = [0] * (len(edges) - 1)
            import bisect

            for x, y, _ in checks:
                k = bisect.bisect_right(edges, x) - 1
                if 0 <= k < len(sums):
                    sums[k] += y
                    ns[k] += 1
            pts = [(edges[k], sums[k] / ns[k]) for k in range(len(sums)) if ns[k]]
        else:
            pts = [(x, y) for x, y, _ in checks]
        tops += [y for _, y in pts]
        ax.plot([x for x, _ in pts], [y for _, y in pts], color=color, lw=1.0, alpha=0.8,
                label=f"{label}: live sample vs production's training rows")
    ax.set_ylim(-0.01, min(1.02, max([0.25] + [t + 0.05 for t in tops])))
    _count_panel(low, edges, series, "drift firings", width)
    _date_axis(low)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    if series:
        low.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _png(fig)


def _width_label(report: dict[str, Any]) -> str:
    """The timeline's bin width, rounded for a title ("40d", not "5w4d23h40m48s")."""
    from datetime import timedelta

    from retrain.backtest.durations import human_duration

    p: dict[str, Any] = next(iter(report["policies"].values()), {})
    return human_duration(timedelta(seconds=p.get("timeline_width_s", 3600)))
