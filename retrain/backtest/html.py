"""``report.html``: one self-contained page (plots embedded as data URIs), PNG copies beside it.

Sections: the run (data, settings, a banner when interrupted), a summary table
of the policies, accuracy over time, cumulative cost, drift over time, accuracy
by period, each policy's decisions (consecutive identical ones folded into one
row with a count) and versions, and the effective model settings.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

from retrain.backtest.plots import COLORS, accuracy_png, cost_png, drift_png

__all__ = ["write_html", "render_html", "fold_decisions", "PLOTS"]

PLOTS = (("accuracy.png", "Accuracy over time", accuracy_png), ("cost.png", "Cumulative cost", cost_png),
         ("drift.png", "Drift over time", drift_png))
_MAX_DECISION_ROWS = 400

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
.best{font-weight:700}
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


def _summary_table(report: dict[str, Any]) -> str:
    pols = report["policies"]
    accs = [p.get("accuracy") for p in pols.values() if p.get("accuracy") is not None]
    best = max(accs) if accs else None
    rows = []
    for i, (label, p) in enumerate(pols.items()):
        trig = ", ".join(f"{k} {v}" for k, v in (p.get("triggers") or {}).items() if v) or "-"
        acc = p.get("accuracy")
        cls = ' class="num best"' if acc is not None and acc == best and len(pols) > 1 else ' class="num"'
        cost = "-" if p.get("cost_usd") is None else f"${p['cost_usd']:.4f}"
        rows.append(
            f"<tr><td class=pol><span class=swatch style='background:{COLORS[i % len(COLORS)]}'></span>{escape(label)}"
            f"{' <em>(partial)</em>' if p.get('partial') else ''}</td>"
            f"<td{cls}>{_fmt(acc)}</td><td class=num>{_fmt(p.get('sharpe'))}</td>"
            f"<td class=num>{p.get('predictions', '-')}</td><td class=num>{p.get('retrainings', '-')}</td>"
            f"<td class=num>{p.get('promotions', '-')}</td><td class=num>{p.get('rollbacks', '-')}</td>"
            f"<td class=num>{cost}</td>"
            f"<td>{escape(trig)}</td><td class=num>{len(p.get('decisions', []))}</td></tr>")
    return ("<table><tr><th>policy</th><th>accuracy after warm-up</th><th>Sharpe (per prediction)</th>"
            "<th>predictions</th><th>retrainings</th><th>promotions</th><th>rollbacks</th><th>cost</th>"
            "<th>requests by trigger</th><th>decisions</th></tr>" + "".join(rows) + "</table>")


def _period_table(report: dict[str, Any]) -> str:
    pols = report["policies"]
    starts: list[str] = []
    for p in pols.values():
        for b in p.get("accuracy_by_period", []):
            if b["start"] not in starts:
                starts.append(b["start"])
    head = "".join(f"<th>{escape(label)}</th>" for label in pols)
    rows = []
    for s in sorted(starts):
        cells = []
        for p in pols.values():
            b = next((x for x in p.get("accuracy_by_period", []) if x["start"] == s), None)
            cells.append("<td class=num>-</td>" if b is None or b["accuracy"] is None else
                         f"<td class=num>{b['accuracy']:.4f} <span class=meta>({b['n']})</span></td>")
        rows.append(f"<tr><td>{_time(s)}</td>{''.join(cells)}</tr>")
    return (f"<table><tr><th>period from ({escape(report['settings']['period'])} each)</th>{head}</tr>"
            + "".join(rows) + "</table>")


def _decisions_table(p: dict[str, Any]) -> str:
    folded = fold_decisions(p.get("decisions", []))
    if not folded:
        return "<p class=meta>No decision.</p>"
    rows = []
    for d in folded[:_MAX_DECISION_ROWS]:
        when = _time(d["time"]) + (f" .. {_time(d['last'])} <b>&times;{d['count']}</b>" if d["count"] > 1 else "")
        if d["count"] > 1:
            d = {**d, "request": f"(the first of {d['count']}) " + (d.get("request") or "")}
        reasons = "<br>".join(escape(r) for r in d["reasons"])
        req = f"<div class=meta>{escape(d['request'][:300])}</div>" if d.get("request") else ""
        rows.append(f"<tr><td>{when}</td><td>{escape(d['trigger'])}</td>"
                    f"<td class='v-{escape(d['verdict'])}'>{escape(d['verdict'])}</td>"
                    f"<td class=reasons>{reasons}{req}</td></tr>")
    more = (f"<p class=meta>{len(folded) - _MAX_DECISION_ROWS} more rows in report.json.</p>"
            if len(folded) > _MAX_DECISION_ROWS else "")
    return ("<table><tr><th>time (UTC)</th><th>trigger</th><th>verdict</th><th>reasons; the request</th></tr>"
            + "".join(rows) + "</table>" + more)


def _versions_table(p: dict[str, Any]) -> str:
    vs = p.get("versions", [])
    if not vs:
        return "<p class=meta>No version was trained.</p>"
    rows = []
    for v in vs:
        status = v.get("status") or ""
        outcome = ("rolled back " + _time(v.get("rolled_back_at")) if v.get("rolled_back")
                   else "promoted " + _time(v.get("promoted_at")) if v.get("promoted_at")
                   else ("ended inconclusive" if status == "withdrawn" else "rejected") if v.get("rejected")
                   else f"still in {'shadow' if status == 'candidate' else escape(status)} at the end"
                   if status in ("candidate", "canary") else escape(status))
        rows.append(f"<tr><td>{escape(v['version'])}</td><td>{_time(v['trained_at'])}</td>"
                    f"<td>{escape(v.get('trigger') or '-')}</td><td class=num>{v.get('data_rows', '-')}</td>"
                    f"<td class=num>{_fmt(v.get('holdout_accuracy'))}</td>"
                    f"<td class=num>{_fmt(v.get('cost_usd'), 5)}</td><td>{outcome}"
                    f"{'<div class=meta>' + escape(v['validation'][:300]) + '</div>' if v.get('validation') else ''}"
                    f"</td></tr>")
    return ("<table><tr><th>version</th><th>trained (UTC)</th><th>trigger</th><th>rows</th>"
            "<th>holdout accuracy</th><th>cost (USD)</th><th>outcome</th></tr>" + "".join(rows) + "</table>")


def render_html(report: dict[str, Any], images: dict[str, bytes]) -> str:
    d, s = report["data"], report["settings"]
    title = f"Backtest of {escape(Path(d['source']).name if d['source'] else 'data')}"
    banner = ("<div class=banner><b>Partial report:</b> the run was interrupted; the figures cover the replay up "
              "to where it stopped.</div>" if report.get("partial") else "")
    notes = [n for p in report["policies"].values() for n in p.get("notes", [])]
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
             "aliases named at the time (the canary's rows by the router's hash). Costs are the measured CPU and "
             "memory of each training, priced as in production.</p>"]
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
