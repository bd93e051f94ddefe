"""``report.html``: one self-contained page (plots embedded as data URIs), PNG copies beside it.

Sections: the run (data, settings, a banner when interrupted), a summary table
of the policies, accuracy over time, cumulative cost, drift over time, accuracy
by period, each policy's decisions (consecutive identical ones folded into one
row with a count) and versions, and the effective model settings.
"""

from __future__ import annotations

import base64
import json
import math
from html import escape
from pathlib import Path
from typing import Any

from retrain.backtest.plots import COLORS, accuracy_png, cost_png, drift_png

__all__ = ["write_html", "render_html", "fold_decisions", "decision_counts", "PLOTS"]

PLOTS = (("accuracy.png", "Accuracy over time", accuracy_png), ("cost.png", "Cumulative cost", cost_png),
         ("drift.png", "Drift over time", drift_png))
# The page shows the last few decisions and versions and counts the rest: report.json has them all.
_RECENT_ROWS = 40
_MAX_KIND_ROWS = 30
_MAX_PERIOD_ROWS = 60

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222;
     line-height:1.4;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:30px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.meta{color:#555;font-size:13px} .banner{background:#fff3cd;border:1px solid #e0c36c;padding:8px 12px;margin:10px 0}
table{border-collapse:collapse;font-size:13px;margin:6px 0 12px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.pol{white-space:nowrap} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafafa}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.v-approve{color:#1a7f37;font-weight:600} .v-reject{color:#b42318;font-weight:600}
.v-defer,.v-pending_approval{color:#9a6700;font-weight:600} .v-coalesced{color:#57606a}
img{max-width:100%;border:1px solid #eee} .reasons{font-size:12px;color:#333}
details{margin:8px 0} pre{font-size:12px;background:#f6f8fa;padding:8px;overflow:auto}
.best{font-weight:700} td.good{color:#1a7f37} td.bad{color:#b42318}
"""


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return escape(str(v))


def _time(s: str | None) -> str:
    return "-" if not s else escape(s[:16].replace("T", " "))


def fold_decisions(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decisions with the same trigger, verdict and blocking rules in a row become one row with a count.

    Requests coalesced into the same run fold together even when other triggers' requests,
    coalesced into that run too, come in between: while a run is in flight every sweep
    asks again, and the table would be nothing else.
    """
    out: list[dict[str, Any]] = []
    for d in decisions:
        # The rules that stood in the way, not their figures (a cooldown's hours change every time).
        key = (d["trigger"], d["verdict"], tuple(r.split(":", 1)[0] for r in d["reasons"]))
        joins = d["reasons"][0] if d["verdict"] == "coalesced" else None
        target = None
        for prev in reversed(out):
            if prev["_key"] == key and (joins is None or prev["_joins"] == joins):
                target = prev
                break
            if joins is None or prev["_joins"] != joins:
                break  # only runs of decisions coalesced into the same run are looked through
        if target is not None:
            target["count"] += 1
            target["last"] = d["time"]
            continue
        out.append({**d, "_key": key, "_joins": joins, "count": 1, "last": d["time"]})
    return out


def _baseline_cell(p: dict[str, Any], key: str) -> str:
    b = (p.get("baselines") or {}).get(key)
    if not b or b.get("accuracy") is None:
        return "<td class=num>-</td>"
    return f"<td class=num>{b['accuracy']:.4f}</td>"


def _summary_table(report: dict[str, Any]) -> str:
    pols = report["policies"]
    accs = [p.get("accuracy") for p in pols.values() if p.get("accuracy") is not None]
    best = max(accs) if accs else None
    up = any("always_up" in (p.get("baselines") or {}) for p in pols.values())
    rows = []
    for i, (label, p) in enumerate(pols.items()):
        trig = ", ".join(f"{k} {v}" for k, v in (p.get("triggers") or {}).items() if v) or "-"
        acc = p.get("accuracy")
        cls = ' class="num best"' if acc is not None and acc == best and len(pols) > 1 else ' class="num"'
        cost = "-" if p.get("cost_usd") is None else f"${p['cost_usd']:.4f}"
        skill = p.get("skill")
        skill_cell = ("<td class=num>-</td>" if skill is None else
                      f"<td class='num {'good' if skill > 0 else 'bad'}'>{100 * skill:+.2f}</td>")
        rows.append(
            f"<tr><td class=pol><span class=swatch style='background:{COLORS[i % len(COLORS)]}'></span>{escape(label)}"
            f"{' <em>(partial)</em>' if p.get('partial') else ''}</td>"
            f"<td{cls}>{_fmt(acc)}</td>{_baseline_cell(p, 'majority')}"
            + (_baseline_cell(p, "always_up") if up else "") + skill_cell +
            f"<td class=num>{_fmt(p.get('sharpe'))}</td>"
            f"<td class=num>{p.get('predictions', '-')}</td><td class=num>{p.get('retrainings', '-')}</td>"
            f"<td class=num>{p.get('promotions', '-')}</td><td class=num>{p.get('rollbacks', '-')}</td>"
            f"<td class=num>{cost}</td>"
            f"<td>{escape(trig)}</td><td class=num>{len(p.get('decisions', []))}</td></tr>")
    first: dict[str, Any] = next(iter(pols.values()), {})
    maj = (first.get("baselines") or {}).get("majority", {})
    head = ("<table><tr><th>policy</th><th>accuracy after warm-up</th>"
            f"<th>baseline: {escape(maj.get('label', 'majority class'))}</th>"
            + ("<th>baseline: always up</th>" if up else "") +
            "<th>skill (points above the best baseline)</th><th>Sharpe (per prediction)</th>"
            "<th>predictions</th><th>retrainings</th><th>promotions</th><th>rollbacks</th><th>cost</th>"
            "<th>requests by trigger</th><th>decisions</th></tr>")
    return head + "".join(rows) + "</table>"


def _merged_periods(bins: list[dict[str, Any]], group: int) -> dict[str, tuple[str, float | None, int]]:
    """Consecutive periods ``group`` at a time, keyed by the first one's start: (end, accuracy, n)."""
    out: dict[str, tuple[str, float | None, int]] = {}
    for i in range(0, len(bins), group):
        chunk = bins[i:i + group]
        n = sum(b["n"] for b in chunk)
        hits = sum((b["accuracy"] or 0.0) * b["n"] for b in chunk)
        out[chunk[0]["start"]] = (chunk[-1]["end"], hits / n if n else None, n)
    return out


def _period_table(report: dict[str, Any]) -> str:
    """Accuracy per ``--period``; more than ``_MAX_PERIOD_ROWS`` periods are merged a few at a time
    (the JSON keeps every one)."""
    pols = report["policies"]
    longest = max((len(p.get("accuracy_by_period", [])) for p in pols.values()), default=0)
    group = max(1, math.ceil(longest / _MAX_PERIOD_ROWS))
    merged = {label: _merged_periods(p.get("accuracy_by_period", []), group) for label, p in pols.items()}
    starts = sorted({s for m in merged.values() for s in m})
    head = "".join(f"<th>{escape(label)}</th>" for label in pols)
    rows = []
    for s in starts:
        cells = []
        for label in pols:
            b = merged[label].get(s)
            cells.append("<td class=num>-</td>" if b is None or b[1] is None else
                         f"<td class=num>{b[1]:.4f} <span class=meta>({b[2]})</span></td>")
        rows.append(f"<tr><td>{_time(s)}</td>{''.join(cells)}</tr>")
    period = escape(report["settings"]["period"])
    what = (f"{group} periods of {period} each, merged (report.json has each period)" if group > 1
            else f"{period} each")
    return f"<table><tr><th>period from ({what})</th>{head}</tr>" + "".join(rows) + "</table>"


def _rule_name(reason: str) -> str:
    """``roi: 0.857 < 1.5 ...`` -> ``roi``; ``all rules passed (bypassed: ...)`` -> ``all rules passed``."""
    return reason.split(" (", 1)[0] if reason.startswith("all rules passed") else reason.split(":", 1)[0]


def decision_counts(decisions: list[dict[str, Any]]) -> list[tuple[str, str, str, int, str, str]]:
    """(trigger, verdict, what stood in the way, count, first, last) of every kind of decision, most
    frequent first: the rule names of the reasons, not their figures."""
    groups: dict[tuple[str, str, str], list] = {}
    for d in decisions:
        rules = ", ".join(dict.fromkeys(_rule_name(r) for r in d.get("reasons", []))) or "-"
        key = (d.get("trigger") or "-", d.get("verdict") or "-", rules)
        g = groups.setdefault(key, [0, d.get("time"), d.get("time")])
        g[0] += 1
        g[2] = d.get("time")
    return sorted(((t, v, r, g[0], g[1], g[2]) for (t, v, r), g in groups.items()), key=lambda x: (-x[3], x[:3]))


def _decisions_table(p: dict[str, Any]) -> str:
    decisions = p.get("decisions", [])
    folded = fold_decisions(decisions)
    if not folded:
        return "<p class=meta>No decision.</p>"
    parts = []
    if len(folded) > _RECENT_ROWS:
        counts = decision_counts(decisions)
        rows = "".join(f"<tr><td>{escape(t)}</td><td class='v-{escape(v)}'>{escape(v)}</td>"
                       f"<td class=reasons>{escape(r)}</td><td class=num>{c:,}</td>"
                       f"<td>{_time(first)}</td><td>{_time(last)}</td></tr>"
                       for t, v, r, c, first, last in counts[:_MAX_KIND_ROWS])
        more = (f"<p class=meta>{len(counts) - _MAX_KIND_ROWS} rarer kinds left out.</p>"
                if len(counts) > _MAX_KIND_ROWS else "")
        parts.append(f"<p class=meta>{len(decisions):,} decisions, by trigger, verdict and the rules that stood "
                     "in the way (report.json lists every one):</p><table><tr><th>trigger</th><th>verdict</th>"
                     "<th>rules</th><th>count</th><th>first (UTC)</th><th>last (UTC)</th></tr>" + rows
                     + "</table>" + more + f"<p class=meta>The last {_RECENT_ROWS} (repeats folded):</p>")
    recent: list[str] = []
    for d in folded[-_RECENT_ROWS:]:
        when = _time(d["time"]) + (f" .. {_time(d['last'])} <b>&times;{d['count']}</b>" if d["count"] > 1 else "")
        if d["count"] > 1:
            d = {**d, "request": f"(the first of {d['count']}) " + (d.get("request") or "")}
        reasons = "<br>".join(escape(r[:300]) for r in d["reasons"])
        req = f"<div class=meta>{escape(d['request'][:300])}</div>" if d.get("request") else ""
        recent.append(f"<tr><td>{when}</td><td>{escape(d['trigger'])}</td>"
                    f"<td class='v-{escape(d['verdict'])}'>{escape(d['verdict'])}</td>"
                    f"<td class=reasons>{reasons}{req}</td></tr>")
    parts.append("<table><tr><th>time (UTC)</th><th>trigger</th><th>verdict</th><th>reasons; the request</th></tr>"
                 + "".join(recent) + "</table>")
    return "".join(parts)


def _outcome(v: dict[str, Any]) -> str:
    status = v.get("status") or ""
    return ("rolled back " + _time(v.get("rolled_back_at")) if v.get("rolled_back")
            else "promoted " + _time(v.get("promoted_at")) if v.get("promoted_at")
            else ("ended inconclusive" if status == "withdrawn" else "rejected") if v.get("rejected")
            else f"still in {'shadow' if status == 'candidate' else escape(status)} at the end"
            if status in ("candidate", "canary") else escape(status))


def _versions_table(p: dict[str, Any]) -> str:
    vs = p.get("versions", [])
    if not vs:
        return "<p class=meta>No version was trained.</p>"
    parts = []
    if len(vs) > _RECENT_ROWS:
        kinds: dict[str, int] = {}
        for v in vs:
            k = _outcome(v).split(" 20", 1)[0]  # "promoted", "rolled back", ... without the time
            kinds[k] = kinds.get(k, 0) + 1
        parts.append(f"<p class=meta>{len(vs):,} versions: "
                     + ", ".join(f"{escape(k)} {n:,}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
                     + f" (report.json lists every one). The last {_RECENT_ROWS}:</p>")
    rows = []
    for v in vs[-_RECENT_ROWS:]:
        rows.append(f"<tr><td>{escape(v['version'])}</td><td>{_time(v['trained_at'])}</td>"
                    f"<td>{escape(v.get('trigger') or '-')}</td><td class=num>{v.get('data_rows', '-')}</td>"
                    f"<td class=num>{_fmt(v.get('holdout_accuracy'))}</td>"
                    f"<td class=num>{_fmt(v.get('cost_usd'), 5)}</td><td>{_outcome(v)}"
                    f"{'<div class=meta>' + escape(v['validation'][:300]) + '</div>' if v.get('validation') else ''}"
                    f"</td></tr>")
    parts.append("<table><tr><th>version</th><th>trained (UTC)</th><th>trigger</th><th>rows</th>"
                 "<th>holdout accuracy</th><th>cost (USD)</th><th>outcome</th></tr>" + "".join(rows) + "</table>")
    return "".join(parts)


def _notes(report: dict[str, Any]) -> list[str]:
    """Every policy's notes once: a note several policies share is said once, naming them."""
    by_note: dict[str, list[str]] = {}
    for label, p in report["policies"].items():
        for n in p.get("notes", []):
            by_note.setdefault(n, []).append(label)
    everyone = len(report["policies"])
    return [n if len(labels) == everyone or n.startswith(f"{labels[0]}:") else f"{', '.join(labels)}: {n}"
            for n, labels in by_note.items()]


def render_html(report: dict[str, Any], images: dict[str, bytes]) -> str:
    d, s = report["data"], report["settings"]
    title = f"Backtest of {escape(Path(d['source']).name if d['source'] else 'data')}"
    banner = ("<div class=banner><b>Partial report:</b> the run was interrupted; the figures cover the replay up "
              "to where it stopped.</div>" if report.get("partial") else "")
    notes = _notes(report)
    meta = (f"{d['rows']} rows from {_time(d['start'])} to {_time(d['end'])} UTC ({d['rows_per_minute']:.3g} per "
            f"minute, {d['skipped_rows']} skipped), {len(d['features'])} features; label delay "
            f"{escape(s['label_delay'])}, warm-up {escape(s['warmup'])} (to {_time(s['warmup_end'])}), "
            f"sweep every {escape(s['sweep_every'])}, operator approves after {escape(str(s['approve_after']))}; "
            f"model {escape(s['model'])} from {escape(s['config'])}. Replayed in {report.get('elapsed_s', 0):.1f} s.")
    parts = [f"<!doctype html><html lang=en><head><meta charset='utf-8'><title>{title}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{title}</h1><p class=meta>{meta}</p>{banner}",
             "<h2>Summary</h2>", _summary_table(report),
             "<p class=meta>Accuracy and Sharpe cover every prediction after the warm-up, made by the version the "
             "aliases named at the time (the canary's rows by the router's hash). The baselines predict one class "
             "on the same rows: the class most frequent in the warm-up, and \"up\" every time (with returns); a "
             "model that does not beat them has no skill on this data. Costs are the measured CPU and memory of "
             "each training, priced as in production.</p>"]
    if s.get("widened"):
        parts.append("<p class=meta>Widened for this stream's rate: " + "; ".join(escape(w) for w in s["widened"])
                     + ".</p>")
    for name, heading, _ in PLOTS:
        if name in images:
            b64 = base64.b64encode(images[name]).decode("ascii")
            parts.append(f"<h2>{heading}</h2><img alt='{heading}' src='data:image/png;base64,{b64}'>")
    parts += ["<h2>Accuracy by period</h2>", _period_table(report), "<h2>Decisions</h2>"]
    for label, p in report["policies"].items():
        parts.append(f"<h3>{escape(label)}</h3>{_decisions_table(p)}")
    parts.append("<h2>Versions</h2>")
    for label, p in report["policies"].items():
        parts.append(f"<h3>{escape(label)}</h3>{_versions_table(p)}")
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Settings</h2><details><summary>Effective model settings and decision policy "
                 f"({escape(report['policies_requested'][0])})</summary><pre>"
                 f"{escape(json.dumps(report.get('model_config', {}), indent=2))}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: dict[str, Any], out: Path) -> Path:
    """Draw the plots, write them as PNG files beside ``report.html``, and the page itself."""
    images: dict[str, bytes] = {}
    if report.get("policies"):
        for name, _, draw in PLOTS:
            images[name] = draw(report)
            (out / name).write_bytes(images[name])
    path = out / "report.html"
    path.write_text(render_html(report, images), encoding="utf-8")
    return path
