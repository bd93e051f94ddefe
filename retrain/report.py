"""Readable views of the store for operators: status, timelines, tables.

Each view is built as plain data first (for ``--json``), then rendered as text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from retrain import slots
from retrain.context import Context
from retrain.core.ports import UnitOfWork
from retrain.core.text import clip
from retrain.core.windows import Counts

if TYPE_CHECKING:
    from retrain.core.records import MetricBucket

__all__ = ["status_data", "render_status", "timeline_data", "print_timeline", "table", "to_json", "run_note"]


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True,
                      default=lambda o: o.isoformat() if isinstance(o, datetime) else str(o))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _counts(rows) -> Counts:
    c = Counts()
    for r in rows:
        c = c + Counts(n=r.n, tp=r.tp, fp=r.fp, tn=r.tn, fn=r.fn, ret_sum=r.ret_sum, ret_sq_sum=r.ret_sq_sum)
    return c


def status_data(ctx: Context, now: datetime | None = None) -> dict[str, Any]:
    now = now or ctx.now()
    out: dict[str, Any] = {"now": now, "models": [], "runs": [], "requests": [], "spend": {}}
    with ctx.store.tx() as tx:
        for name in tx.models.names():
            m = tx.models.get(name)
            assert m is not None  # listed by model_names
            prod = tx.aliases.get(name, "production")
            latest = tx.monitoring.buckets(name, None, _latest_minute(tx, name) - timedelta(hours=1)) if prod else []
            c = _counts(latest)
            out["models"].append({
                "model": name, "production": prod, "previous": tx.aliases.get(name, "previous"),
                "candidate": tx.aliases.get(name, "candidate"), "paused": m.paused, "deployed_at": m.deployed_at,
                "versions": len(tx.versions.all(name, include_deleted=False)),
                "last_hour": {"n": c.n, "accuracy": c.accuracy if c.n else None, "f1": c.f1 if c.n else None,
                              "sharpe": c.sharpe if c.n > 1 else None},
            })
        for r in tx.runs.newest(limit=20):
            out["runs"].append({"id": r.id, "model": r.model, "trigger": r.trigger, "state": r.state,
                                "stage": r.stage, "progress": r.progress, "attempt": r.attempt,
                                "candidate": r.candidate_version, "created_at": r.created_at,
                                "blocked_on": r.blocked_on, "error": r.error,
                                "cost_usd": (r.usage or {}).get("total_usd"),
                                "lease_owner": r.lease_owner, "lease_expires_at": r.lease_expires_at,
                                "heartbeat_at": r.heartbeat_at, "note": run_note(r.state, r.blocked_on, r.error)})
        limit = ctx.settings.training_slots
        out["training_slots"] = {"limit": limit, "held": [
            {"slot": h.slot, "run_id": h.run_id, "attempt": h.attempt, "owner": h.owner,
             "lease_expires_at": h.lease_expires_at} for h in slots.holders(tx, now, limit)]}
        for q in tx.requests.newest(statuses=("open", "deferred", "pending_approval"), limit=50):
            d = tx.decisions.get(q.decision_id) if q.decision_id else None
            out["requests"].append({"id": q.id, "model": q.model, "trigger": q.trigger, "status": q.status,
                                    "reason": q.reason, "defer_until": d.defer_until if d else None,
                                    "decision": d.summary if d else None})
        day, month = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")
        out["spend"] = {"today_usd": round(tx.ledger.spend(day=day), 4),
                        "month_usd": round(tx.ledger.spend(month=month), 4)}
        out["pause_all"] = bool((tx.controls.get("pause_all") or {}).get("paused"))
    return out


def run_note(state: str, blocked_on: str | None, error: str | None) -> str:
    """What an operator needs to know about a run in one phrase: what it waits for, or
    why it ended (a dead run's reason names the attempts it used)."""
    if state == "queued" and blocked_on:
        return f"waits for {blocked_on}"
    if state in ("dead", "failed", "rejected", "cancelled") and error:
        return f"{state}: {error}"
    if state in ("queued", "training") and error:
        return f"retrying after: {error}"
    return ""


def _latest_minute(tx: UnitOfWork, model: str) -> datetime:
    return tx.monitoring.latest_minute(model) or datetime(1970, 1, 1).astimezone()


def _f(x, fmt=".3f"):
    return "-" if x is None else format(x, fmt)


def render_status(data: dict[str, Any]) -> str:
    parts = [f"retrain status at {data['now']:%Y-%m-%d %H:%M} UTC"
             + ("   (AUTOMATIC RETRAINING PAUSED FOR ALL MODELS)" if data.get("pause_all") else "")]
    parts.append("\nModels")
    parts.append(table([[m["model"], m["production"] or "-", m["previous"] or "-", m["versions"],
                         m["last_hour"]["n"], _f(m["last_hour"]["accuracy"]), _f(m["last_hour"]["f1"]),
                         "paused" if m["paused"] else "active"] for m in data["models"]],
                       ["model", "production", "previous", "versions", "n (last h)", "accuracy", "f1", "automation"]))
    parts.append("\nOpen requests")
    parts.append(table([[r["id"][:8], r["model"], r["trigger"], r["status"],
                         f"{r['defer_until']:%m-%d %H:%M}" if r["defer_until"] else "",
                         clip(r["decision"] or r["reason"], 70)]
                        for r in data["requests"]], ["id", "model", "trigger", "status", "until", "why"])
                 if data["requests"] else "  none")
    parts.append("\nRecent runs")
    parts.append(table([[r["id"][:8], r["model"], r["trigger"], r["state"], f"{r['progress']:.0%}", r["attempt"],
                         r["candidate"] or "", f"{r['created_at']:%m-%d %H:%M}", _f(r["cost_usd"], ".4f"),
                         r["stage"] or "", clip(r.get("note") or r["error"] or r["blocked_on"] or "", 80)]
                        for r in data["runs"]],
                       ["id", "model", "trigger", "state", "progress", "attempt", "version", "created", "cost $",
                        "stage", "note"])
                 if data["runs"] else "  none")
    if "training_slots" in data:
        ts = data["training_slots"]
        held = ", ".join(f"slot {h['slot']}: run {h['run_id'][:8]} attempt {h['attempt']} on {h['owner']}"
                         for h in ts["held"])
        parts.append(f"\nTraining slots: {len(ts['held'])} of {ts['limit']} in use" + (f" ({held})" if held else ""))
    parts.append(f"\nSpend: ${data['spend']['today_usd']:.4f} today, ${data['spend']['month_usd']:.4f} this month")
    return "\n".join(parts)


def timeline_data(ctx: Context, model: str, period: timedelta = timedelta(hours=6)) -> dict[str, Any]:
    with ctx.store.tx() as tx:
        buckets = tx.monitoring.buckets(model, None, datetime(1970, 1, 1).astimezone())
        events = tx.audit.events(model, limit=100_000)
        history = tx.aliases.history(model, limit=10_000)
        versions = tx.versions.all(model)
        decisions = tx.decisions.newest(model, limit=10_000)
    metrics: list[dict[str, Any]] = []
    if buckets:
        start = buckets[0].minute
        cur = start
        acc: list[MetricBucket] = []
        for b in buckets:
            while b.minute >= cur + period:
                if acc:
                    metrics.append(_period(cur, cur + period, acc))
                cur, acc = cur + period, []
            acc.append(b)
        if acc:
            metrics.append(_period(cur, cur + period, acc))
    return {
        "model": model,
        "metrics": metrics,
        "events": [{"at": e.at, "kind": e.kind, "actor": e.actor, "message": e.message} for e in events],
        "alias_history": [{"at": h.at, "alias": h.alias, "from": h.from_version, "to": h.to_version,
                           "actor": h.actor, "reason": h.reason} for h in history],
        "versions": [{"version": v.version, "status": v.status, "created_at": v.created_at, "bump": v.bump_reason,
                      "holdout_accuracy": (v.metrics or {}).get("holdout", {}).get("accuracy")} for v in versions],
        "decisions": [{"at": d.decided_at, "trigger": d.trigger, "verdict": d.verdict,
                       "summary": _decision_summary(d.verdict, d.summary, d.detail)}
                      for d in reversed(decisions)],
    }


def _decision_summary(verdict: str, summary: str, detail: dict[str, Any] | None) -> str:
    """A decision's summary; a coalesced one by its reason only (the rules it did not need are in
    ``retrain decisions``)."""
    if verdict == "coalesced":
        run = str((detail or {}).get("coalesced_with") or "")[:8]
        return f"coalesced: joins the run already in progress ({run}); nothing new is started"
    return summary


def _period(start, end, rows) -> dict[str, Any]:
    c = _counts(rows)
    versions = sorted({r.version for r in rows})
    return {"start": start, "end": end, "n": c.n, "accuracy": c.accuracy if c.n else None,
            "f1": c.f1 if c.n else None, "versions": versions}


def print_timeline(ctx: Context, model: str, out: TextIO) -> None:
    data = timeline_data(ctx, model)
    w = out.write
    w(f"Timeline of '{model}'\n\nLive accuracy per 6 hours\n")
    for m in data["metrics"]:
        bar = "#" * int(round(((m["accuracy"] or 0) - 0.40) * 100)) if m["accuracy"] else ""
        w(f"  {m['start']:%a %d %H:%M}  {_f(m['accuracy'])}  {bar:<25} n={m['n']:<6} "
          f"served by {', '.join(m['versions'])}\n")
    w("\nDecisions\n")
    for d in data["decisions"]:
        w(f"  {d['at']:%a %d %H:%M}  {d['trigger']:<11} {clip(d['summary'], 150)}\n")
    w("\nVersions\n")
    w(table([[v["version"], v["status"], f"{v['created_at']:%a %d %H:%M}", _f(v["holdout_accuracy"]),
              clip(v["bump"], 70)] for v in data["versions"]],
            ["version", "status", "trained", "holdout acc", "why this number"]) + "\n")
    w("\nAlias moves\n")
    for h in data["alias_history"]:
        w(f"  {h['at']:%a %d %H:%M}  {h['alias']:<10} {h['from'] or '-':>6} -> {h['to'] or '-':<6}  "
          f"{clip(h['reason'], 90)}\n")
