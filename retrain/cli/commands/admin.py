"""`retrain` subcommands of the decision and its administration.

``train`` (a manual request, with ``--override-budget --reason``), ``approve`` /
``reject`` (a decision waiting for approval), ``decisions`` (every rule with its
value, limit and verdict), ``costs`` (spend per day and month, per model, against
the caps), ``audit`` (the append-only log, with filters), ``pause`` / ``resume``
(automatic retraining of one model or all).

Each prints text that reads well in a terminal, or with ``--json`` one JSON
document for scripts (times as ISO 8601 strings, UTC).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from retrain.cli.commands.common import (
    _ctx,
    _out,
    _publish_outbox,
    clip,
    demo_now,
    iso_time,
    non_negative_int,
    positive_int,
    with_json,
)
from retrain.core.errors import PayloadError
from retrain.core.policy import format_usd

__all__ = [
    "register",
    "render_decision",
    "value_model_lines",
    "render_costs",
    "costs_data",
    "format_value",
    "format_limit",
]


_clip = clip


def _num(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


# ---------------------------------------------------------------- train, approve, reject, pause
def cmd_train(args) -> int:
    from retrain.core.payloads import ManualRequestPayload
    from retrain.steps.requests import request_retraining, sync_models

    if args.override_budget and not (args.reason or "").strip():
        raise PayloadError("--override-budget needs --reason: the override and its reason are audited")
    ctx = _ctx()
    sync_models(ctx)
    reason = args.reason or "manual request"
    res = request_retraining(ctx, ManualRequestPayload(
        model=args.model, reason=reason, requested_by=args.actor, override_budget=args.override_budget,
        override_reason=reason if args.override_budget else None, approved_by=args.approved_by))
    published = _publish_outbox(ctx)
    what = "budget override requested; " if args.override_budget else ""
    print(f"request {res.request_id}: {res.detail}; {what}" + (_who_decides(ctx, args.model) if published is not False
          else "kept in the outbox until the broker is reachable (the relay on beat publishes it)"))
    return 0


#: What starts a worker for the decision (the README's "Running on Redis and Postgres"); {celery} is the script.
WORKER_COMMAND = "{celery} -A workers.app worker -Q monitoring,decision -n monitoring@%h"


def _who_decides(ctx, model: str) -> str:
    """Whether a worker will decide the request now; if none is running, how to start one.

    Asks the broker which workers consume the ``decision`` queue (one broadcast, 1 s at most)
    where it can tell (Redis, RabbitMQ); the embedded and in-memory brokers cannot.
    """
    from retrain.cli.commands.common import decision_consumers, retrain_command

    follow = f"then see it with: {retrain_command()} decisions {model}"
    start = WORKER_COMMAND.format(celery=retrain_command("celery"))
    consumers = decision_consumers(ctx.settings.broker_url, timeout=1.0)
    if consumers:
        return (f"the decision follows ({len(consumers)} worker(s) on the decision queue); "
                f"see it with: {retrain_command()} decisions {model}")
    if consumers is None:
        return (f"a worker decides it from {_transport(ctx.settings.broker_url)}, which cannot say whether one "
                f"is running; if none is, nothing happens until you start one: {start}; {follow}")
    return (f"no worker is running on the decision queue (none answered within 1 s): the request waits in the "
            f"broker; start one with: {start}; {follow}")


def _transport(url: str) -> str:
    scheme = url.split("://", 1)[0]
    return {"sqla+sqlite": "the embedded SQLite broker", "memory": "an in-memory broker no other process can "
            "read"}.get(scheme, scheme)


def cmd_resolve(args, approve: bool) -> int:
    from retrain.steps.decide import resolve_pending

    ctx = _ctx()
    res = resolve_pending(ctx, args.id, approve=approve, actor=args.actor, reason=args.reason or "")
    _publish_outbox(ctx)
    print(res.summary + (f"; run {res.run_id}" if res.run_id else ""))
    return 0


def cmd_pause(args, paused: bool) -> int:
    if args.all == bool(args.model):
        raise PayloadError("name one model, or --all")
    ctx = _ctx()
    if args.model:
        ctx.config.model(args.model)  # UnknownModelError names the configured models
    from retrain.steps.requests import sync_models

    sync_models(ctx)
    with ctx.store.tx() as tx:
        tx.models.set_paused(None if args.all else args.model, paused, args.actor, args.reason, ctx.now())
    what = "paused" if paused else "resumed"
    print(f"{what} automatic retraining for {'all models' if args.all else args.model}"
          + ("; requests are rejected (reason 'paused') until resume" if paused else ""))
    return 0


# ---------------------------------------------------------------- decisions
_HOURS = ("cooldown",)
_COUNTS = ("daily_runs", "global_daily_runs")
_MONEY = ("budget_daily", "budget_monthly", "model_budget_daily", "model_budget_monthly")


def format_value(rule: str, v: Any) -> str:
    """A rule's value for a person: units, money, short ids."""
    if v is None:
        return "-"
    if rule == "approval":
        return f"{v:.2f} d" if isinstance(v, (int, float)) else str(v)
    if rule in _HOURS:
        return f"{v:.1f} h since last" if isinstance(v, (int, float)) else str(v)
    if rule in _MONEY:
        return format_usd(v) + " projected"
    if rule == "roi":
        return f"{v:.3g}" if isinstance(v, (int, float)) else str(v)
    if rule == "coalesce":
        return f"run {str(v)[:8]}"
    if rule in ("paused", "budget_override"):
        return "yes" if v else "no"
    if rule == "resources" and isinstance(v, dict):
        return (f"mem {v.get('free_memory_mb', 0):.0f} MB, cpu {v.get('cpu_load_pct', 0):.0f} %, "
                f"disk {v.get('free_disk_mb', 0) / 1024:.1f} GB")
    return str(v)


def format_limit(rule: str, v: Any) -> str:
    """A rule's limit for a person."""
    if v is None:
        return "none" if rule in _COUNTS + _MONEY else "-"
    if rule == "approval":
        return f"first {v:g} d"
    if rule in _HOURS:
        return f">= {v:g} h"
    if rule in _COUNTS:
        return f"< {v} a day"
    if rule in _MONEY:
        return f"<= {format_usd(v)}"
    if rule == "roi":
        return f">= {v:g}"
    if rule in ("paused", "budget_override") and isinstance(v, bool):
        return "-"
    if rule == "resources" and isinstance(v, dict):
        return (f">= {v.get('min_free_memory_mb', 0):.0f} MB, <= {v.get('max_cpu_load_pct', 0):.0f} %, "
                f">= {v.get('min_free_disk_mb', 0) / 1024:.1f} GB")
    return str(v)


def _rule_verdict(r: dict) -> str:
    if r.get("bypassed"):
        return "bypassed" if r.get("passed") else "BYPASSED"  # upper case: it would have failed
    if r.get("passed"):
        return "ok"
    if r.get("retry_at"):
        return f"FAIL until {datetime.fromisoformat(r['retry_at']):%m-%d %H:%M}"
    return "FAIL"


def _price(v: Any) -> str:
    """Money that may be far below a cent (a value per prediction)."""
    return f"${v:.3g}" if isinstance(v, (int, float)) and 0 < abs(v) < 0.001 else format_usd(v)


_GAP_SOURCES: dict[str | None, str] = {
    "evidence.baseline_accuracy-current_accuracy": "validated baseline - live accuracy",
    "evidence.accuracy_floor-current_accuracy": "accuracy floor - live accuracy",
    "evidence.expected_recovery_points": "given by the request", "default": "default_gap_points",
}


def value_model_lines(vm: dict) -> list[str]:
    """Every input of the ROI formula, one line each (decisions recorded before a field existed show less)."""
    roi = vm.get("roi")
    n_day, horizon = vm.get("predictions_per_day") or 0.0, vm.get("horizon_days") or 0.0
    predictions = vm.get("predictions", n_day * horizon)
    gap, raw = vm.get("gap_points") or 0.0, vm.get("gap_measured_points")
    clamped = f" (measured {raw:.3g}, clamped to [0, {vm.get('max_gap_points', 0):g}])" \
        if raw is not None and abs(raw - gap) > 1e-9 else ""
    src = vm.get("predictions_source")
    lines = [
        f"predictions  {_num(n_day)}/day" + (f" ({src})" if src else "")
        + f" x horizon {horizon:g} d = {_num(predictions)}",
        f"gap          {gap:.3g} pt{clamped} ({_GAP_SOURCES.get(vm.get('gap_source'), vm.get('gap_source', '?'))}) "
        f"x recovery {vm.get('recovery_factor', 0):g} = {vm.get('recovery_points', 0):.3g} pt",
    ]
    per = vm.get("value_per_correct_usd")
    if vm.get("basis") == "returns":
        lines.append(f"value        returns: 2 x notional {format_usd(vm.get('notional_usd'))} x mean |return| "
                     f"{vm.get('mean_abs_return', 0):.3g} (on {vm.get('returns_measured_on', 0):,} outcomes) = "
                     f"{_price(per)} a correct prediction")
    elif per is not None:
        lines.append(f"value        no returns in the outcomes: 100 x value_per_accuracy_point_usd "
                     f"{_price(vm.get('value_per_accuracy_point_usd'))} = {_price(per)} a correct prediction")
    else:  # a decision recorded before the value basis existed
        lines.append(f"value        {_price(vm.get('value_per_accuracy_point_usd'))} an accuracy point a prediction")
    lines.append(f"benefit      {format_usd(vm.get('benefit_usd'))}; "
                 f"estimate {format_usd(vm.get('estimated_cost_usd'))}; "
                 f"ROI {'-' if roi is None else f'{roi:.3g}'}"
                 + (f" (threshold >= {vm['min_roi']:g})" if vm.get("min_roi") is not None else ""))
    below, cur, floor = vm.get("below_floor"), vm.get("current_accuracy"), vm.get("accuracy_floor")
    if floor is not None and cur is not None:
        bound = vm.get("accuracy_upper_bound")
        on = f" on {vm['measured_on']:,} outcomes" if vm.get("measured_on") else ""
        if below:
            limit = vm.get("max_hours_below_floor_on_roi")
            lines.append(f"floor        live {cur:.3f} < floor {floor:.3f} (upper bound {bound:.3f}{on}), below since "
                         f"{str(vm.get('below_floor_since'))[:16]}: {vm.get('hours_below_floor') or 0:.1f} h of "
                         + (f"{limit:g} h before ROI yields" if limit is not None else "no limit (ROI never yields)"))
        elif below is None:
            lines.append(f"floor        live {cur:.3f} < floor {floor:.3f} but not significantly (upper bound "
                         f"{bound:.3f}{on}): the floor clock neither starts nor stops")
        else:
            lines.append(f"floor        live {cur:.3f} >= floor {floor:.3f}")
    return ["value model:"] + ["  " + line for line in lines]


def render_decision(d: dict) -> str:
    """One decision as a block: what was asked, the verdict, every rule, the value model."""
    from retrain.report import table

    head = f"{d['at']:%Y-%m-%d %H:%M:%S}  {d['model']}  {d['trigger']} request  ->  {d['verdict'].upper()}"
    if d.get("defer_until"):
        head += f" until {d['defer_until']:%Y-%m-%d %H:%M} UTC"
    if d.get("resolved_by"):
        head += f"  (answered by {d['resolved_by']})"
    lines = [head]
    detail = d.get("detail") or {}
    req = d.get("request") or {}
    # What the decision was made on (recorded with it); a request refreshed since is not shown.
    asked = detail.get("request") or {}
    if req or asked:
        lines.append(f"  asked by {asked.get('requested_by', req.get('requested_by'))}: "
                     f"{_clip(asked.get('reason', req.get('reason')), 150)}")
        ev = asked.get("evidence") if asked else None
        if ev:
            lines.append(f"  evidence when decided: {_clip(evidence_line(ev), 150)}")
        if req.get("override_budget"):
            why = (ev if ev is not None else (req.get("evidence") or {})).get("override_reason") or "no reason"
            lines.append(f"  budget override requested: {why}")
    est = detail.get("estimate") or {}
    lines.append(f"  decision {d['id']}  request {d['request_id']}  estimate {format_usd(d['estimated_cost_usd'])}"
                 + (f" ({est.get('source')})" if est.get("source") else ""))
    rows = [[r["rule"], _rule_verdict(r), format_value(r["rule"], r.get("value")),
             format_limit(r["rule"], r.get("limit")), _clip(r.get("detail"), 80)] for r in d["rules"]]
    lines.extend("  " + line for line in table(rows, ["rule", "verdict", "value", "limit", "detail"]).splitlines())
    if detail.get("value_model"):
        lines.extend("  " + line for line in value_model_lines(detail["value_model"]))
    if detail.get("roi_yields_to"):
        lines.append(f"  ROI yielded to: {detail['roi_yields_to']}")
    if detail.get("override"):
        lines.append(f"  {detail['override']}")
    return "\n".join(lines)


#: Evidence fields shown on a decision's line, in this order (the rest is in --json).
_EVIDENCE_SHOWN = ("metric", "version", "baseline_accuracy", "current_accuracy", "measured_on", "drifted",
                   "features", "severity", "value")


def evidence_line(ev: dict[str, Any]) -> str:
    """A request's evidence in one line: the figures a reader checks first."""
    parts = []
    for k in _EVIDENCE_SHOWN:
        v = ev.get(k)
        if v is None or v == [] or v == {}:
            continue
        if isinstance(v, float):
            v = f"{v:.3g}"
        elif isinstance(v, (list, tuple)):
            v = ", ".join(str(x.get("name", x)) if isinstance(x, dict) else str(x) for x in v)
        parts.append(f"{k} {v}")
    return "; ".join(parts) or "-"


def cmd_decisions(args) -> int:
    ctx = _ctx()
    with ctx.store.tx() as tx:
        rows = tx.decisions.newest(args.model, limit=args.limit if not args.verdict else max(args.limit * 10, 500))
        if args.verdict:
            rows = [d for d in rows if d.verdict == args.verdict][: args.limit]
        data = []
        for d in rows:
            req = tx.requests.get(d.request_id)
            data.append({
                "id": d.id, "at": d.decided_at, "model": d.model, "trigger": d.trigger, "verdict": d.verdict,
                "request_id": d.request_id, "rules": d.rules, "defer_until": d.defer_until,
                "estimated_cost_usd": d.estimated_cost_usd, "detail": d.detail, "summary": d.summary,
                "resolved_by": d.resolved_by, "resolved_at": d.resolved_at,
                # The evidence as it was when decided (kept with the decision); the request's own is
                # refreshed by later firings, so it is only the fallback for decisions recorded before.
                "evidence": (d.detail or {}).get("request", {}).get("evidence", None if req is None
                                                                    else req.evidence),
                "request": None if req is None else {
                    "status": req.status, "reason": req.reason, "requested_by": req.requested_by,
                    "override_budget": req.override_budget, "run_id": req.run_id},
            })
    data.reverse()  # oldest first, so the newest is next to the prompt
    _out(args, data, "\n\n".join(render_decision(d) for d in data) or "no decisions")
    return 0


# ---------------------------------------------------------------- costs
def costs_data(ctx, now: datetime, days: int) -> dict[str, Any]:
    """Spend per day and per month, per model, with the caps that apply (global and per model)."""
    from retrain.core.costs import estimate_cost
    from retrain.core.policy import Policy

    first_day = (now - timedelta(days=days - 1)).strftime("%Y-%m-%d")
    month = now.strftime("%Y-%m")
    since_month = min(first_day[:7], month)
    with ctx.store.tx() as tx:
        totals = tx.ledger.totals(since_month)
        estimates = {m: estimate_cost(tx.ledger.actual_costs(m), cfg.first_run_cost_usd)
                     for m, cfg in sorted(ctx.config.models.items())}
    glob = Policy.from_mapping({"offpeak_start": None, "offpeak_end": None, **ctx.config.policy})
    policies = {m: ctx.config.policy_for(m) for m in ctx.config.models}

    cell: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: {"actual": 0.0, "held": 0.0, "runs": 0})
    for day, model, kind, amount, n in totals:
        c = cell[(day, model)]
        if kind == "actual":
            c["actual"] += amount
        else:
            c["held"] += amount
        if kind == "reservation":
            c["runs"] += n

    def row(key: str, model: str, c: dict[str, float], cap: float | None) -> dict[str, Any]:
        total = c["actual"] + c["held"]
        return {"period": key, "model": model, "runs": int(c["runs"]), "actual_usd": round(c["actual"], 6),
                "held_usd": round(c["held"], 6), "total_usd": round(total, 6), "cap_usd": cap,
                "used_pct": None if not cap else round(100.0 * total / cap, 1)}

    by_day: list[dict[str, Any]] = []
    day_sum: dict[str, dict[str, float]] = defaultdict(lambda: {"actual": 0.0, "held": 0.0, "runs": 0})
    month_model: dict[str, dict[str, float]] = defaultdict(lambda: {"actual": 0.0, "held": 0.0, "runs": 0})
    for (day, model), c in sorted(cell.items()):
        if day[:7] == month:
            for k in ("actual", "held", "runs"):
                month_model[model][k] += c[k]
        if day < first_day:
            continue
        for k in ("actual", "held", "runs"):
            day_sum[day][k] += c[k]
        by_day.append(row(day, model, c, policies[model].model_daily_budget_usd if model in policies else None))
    days_total = [row(day, "(all)", c, glob.daily_budget_usd) for day, c in sorted(day_sum.items())]
    month_rows = [row(month, m, c, policies[m].model_monthly_budget_usd if m in policies else None)
                  for m, c in sorted(month_model.items())]
    month_all = {"actual": sum(c["actual"] for c in month_model.values()),
                 "held": sum(c["held"] for c in month_model.values()),
                 "runs": sum(c["runs"] for c in month_model.values())}
    today = now.strftime("%Y-%m-%d")
    today_all = day_sum.get(today, {"actual": 0.0, "held": 0.0, "runs": 0})
    return {
        "now": now, "days": days, "month": month,
        "caps": {"daily_usd": glob.daily_budget_usd, "monthly_usd": glob.monthly_budget_usd,
                 "per_model": {m: {"daily_usd": p.model_daily_budget_usd, "monthly_usd": p.model_monthly_budget_usd,
                                   "global_daily_usd": p.daily_budget_usd, "global_monthly_usd": p.monthly_budget_usd}
                               for m, p in sorted(policies.items())}},
        "today": row(today, "(all)", today_all, glob.daily_budget_usd),
        "this_month": row(month, "(all)", month_all, glob.monthly_budget_usd),
        "by_day": by_day, "day_totals": days_total, "by_model_month": month_rows,
        "next_estimate_usd": estimates,
    }


def render_costs(data: dict[str, Any]) -> str:
    from retrain.report import table

    def cap(r: dict) -> str:
        if r["cap_usd"] is None:
            return "-"
        return f"{format_usd(r['cap_usd'])} ({r['used_pct']:.0f} %)"

    def line(r: dict) -> list[Any]:
        return [r["period"], r["model"], r["runs"], f"{r['actual_usd']:.4f}", f"{r['held_usd']:.4f}",
                f"{r['total_usd']:.4f}", cap(r)]

    heads = ["day (UTC)", "model", "runs", "actual $", "held $", "total $", "cap (used)"]
    rows: list[list[Any]] = []
    totals = {r["period"]: r for r in data["day_totals"]}
    for day in sorted({r["period"] for r in data["by_day"]}):
        rows.extend(line(r) for r in data["by_day"] if r["period"] == day)
        rows.append(line(totals[day]))
    out = [f"Spend by day, last {data['days']} days (held: reservations of runs still in flight; "
           "a run's cost is booked to the day its decision reserved it)",
           table(rows, heads) if rows else "  no spend"]
    mrows = [line(r) + [f"{data['next_estimate_usd'].get(r['model'], 0.0):.4f}"] for r in data["by_model_month"]]
    mrows.append(line(data["this_month"]) + [""])
    out += ["", f"This month ({data['month']}) by model, with the next run's estimate",
            table(mrows, ["month"] + heads[1:] + ["next est. $"])]
    t, m = data["today"], data["this_month"]
    out += ["", f"today {format_usd(t['total_usd'])} of {format_usd(data['caps']['daily_usd'])} daily cap "
                f"({t['used_pct'] or 0:.0f} %); this month {format_usd(m['total_usd'])} of "
                f"{format_usd(data['caps']['monthly_usd'])} monthly cap ({m['used_pct'] or 0:.0f} %)"]
    caps = (data["caps"]["daily_usd"], data["caps"]["monthly_usd"])
    odd = [f"{name} checks the global caps as {format_usd(c['global_daily_usd'])}/day, "
           f"{format_usd(c['global_monthly_usd'])}/month"
           for name, c in data["caps"]["per_model"].items()
           if (c["global_daily_usd"], c["global_monthly_usd"]) != caps]
    if odd:
        out.append("per-model overrides: " + "; ".join(odd))
    return "\n".join(out)


def cmd_costs(args) -> int:
    ctx = _ctx()
    # --until a past day shows that day's figures as they stand now; a demo home uses its simulated clock.
    clock = demo_now(ctx)
    if args.until:
        now = args.until + timedelta(hours=23, minutes=59)
    else:
        now = clock if clock is not None else ctx.now()
    data = costs_data(ctx, now, args.days)
    text = render_costs(data)
    if clock is not None and not args.until:
        data["clock"] = "demo"
        text = f"(a demo home: as of its simulated clock, {now:%Y-%m-%d %H:%M} UTC)\n" + text
    _out(args, data, text)
    return 0


# ---------------------------------------------------------------- audit
def cmd_audit(args) -> int:
    ctx = _ctx()
    with ctx.store.tx() as tx:
        rows = tx.audit.log(model=args.model, kinds=args.kind, actor=args.actor, subject=args.subject,
                            since=args.since, limit=args.limit)
    data = [{"id": e.id, "at": e.at, "model": e.model, "kind": e.kind, "actor": e.actor, "subject": e.subject,
             "message": e.message, "data": e.data} for e in rows]
    text = "\n".join(f"{e['at']:%Y-%m-%d %H:%M:%S}  {e['kind']:<10} {_clip(e['actor'], 16):<16} "
                     f"{(e['model'] or '-'):<12} {e['message']}" for e in data)
    _out(args, data, text or "no events")
    return 0


# ---------------------------------------------------------------- parser
def register(sub) -> None:
    """Add this area's subcommands to the parser."""

    tr = sub.add_parser("train", help="ask for a retraining now (manual trigger; every rule still applies)")
    tr.add_argument("model", help="a configured model")
    tr.add_argument("--reason", help="why (required with --override-budget, and recorded as its reason)")
    tr.add_argument("--actor", default="operator", help="who asks (audited)")
    tr.add_argument("--override-budget", action="store_true",
                    help="skip the budget caps and the ROI rule for this request; needs --reason")
    tr.add_argument("--approved-by", help="an approval given with the request (first-week approval gate)")
    tr.set_defaults(fn=cmd_train)

    for name, approve in (("approve", True), ("reject", False)):
        sp = sub.add_parser(name, help=f"{name} a decision waiting for approval (request or decision id, or a prefix)")
        sp.add_argument("id", help="the request's or decision's id, or a unique prefix")
        sp.add_argument("--reason", required=not approve, help="why (audited)" + ("" if approve else "; required"))
        sp.add_argument("--actor", default="operator", help="who answers (audited)")
        sp.set_defaults(fn=lambda a, ap=approve: cmd_resolve(a, ap))

    d = with_json(sub.add_parser("decisions", help="decisions with every rule: value, limit, verdict"))
    d.add_argument("model", nargs="?", help="only this model's decisions")
    d.add_argument("--limit", type=positive_int, default=20, help="the newest N decisions (at least 1; default 20)")
    d.add_argument("--verdict", choices=["approve", "defer", "reject", "pending_approval", "coalesced"],
                   help="only decisions with this verdict")
    d.set_defaults(fn=cmd_decisions)

    c = with_json(sub.add_parser("costs", help="spend per day and month, per model, against the caps"))
    c.add_argument("--days", type=non_negative_int, default=14, help="how many days to list (0 or more; default 14)")
    c.add_argument("--until", type=iso_time, help="the last day to list, ISO date (default today, UTC; "
                   "on a demo home, the demo's simulated day)")
    c.set_defaults(fn=cmd_costs)

    a = with_json(sub.add_parser("audit", help="the append-only audit log, oldest first"))
    a.add_argument("model", nargs="?", help="only this model's events")
    a.add_argument("--kind", action="append", help="only these kinds (repeatable): request, decision, bypass, "
                   "approval, run, training, version, validation, promotion, rollback, config, admin, ...")
    a.add_argument("--actor", help="only events by this actor")
    a.add_argument("--subject", help="only events about this id (or id prefix)")
    a.add_argument("--since", type=iso_time,
                   help="only events at or after this ISO date/time (UTC unless an offset is given)")
    a.add_argument("--limit", type=positive_int, default=200, help="the newest N events (at least 1; default 200)")
    a.set_defaults(fn=cmd_audit)

    for name, paused in (("pause", True), ("resume", False)):
        sp = sub.add_parser(name, help=f"{name} automatic retraining for a model or --all")
        sp.add_argument("model", nargs="?", help="a configured model (or --all)")
        sp.add_argument("--all", action="store_true", help="every model")
        sp.add_argument("--reason", default="operator decision", help="why (audited)")
        sp.add_argument("--actor", default="operator", help="who (audited)")
        sp.set_defaults(fn=lambda a, pz=paused: cmd_pause(a, pz))
