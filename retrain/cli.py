"""``retrain``: the operator's command line.

Reads the same ``RETRAIN_*`` settings as the workers. Commands that change state
write to the database and leave follow-up messages in the outbox; they are
published to the broker at once when it is reachable, else by the relay on beat.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from retrain.errors import RetrainError

__all__ = ["main"]


from retrain.commands.common import _ctx, _out, _publish_outbox, _short  # noqa: F401


# ---------------------------------------------------------------- commands
def cmd_db(args) -> int:
    from retrain.settings import load_settings
    from retrain.storage.db import Database
    from retrain.storage.schema import current_revision, head_revision, upgrade

    s = load_settings()
    s.ensure_home()
    engine = Database(s.database_url).engine
    if args.action == "upgrade":
        upgrade(engine)
        print(f"database {engine.url.render_as_string(hide_password=True)} at revision {current_revision(engine)}")
    else:
        cur, head = current_revision(engine), head_revision(engine)
        print(f"current {cur or 'none'}, head {head}" + ("" if cur == head else "  -> run: retrain db upgrade"))
    return 0


def cmd_demo(args) -> int:
    demo = importlib.import_module("workers.demo")
    return demo.run_demo(days=args.days, home=Path(args.dir), step_minutes=args.step_minutes, quiet=args.quiet)


def cmd_status(args) -> int:
    from retrain.report import render_status, status_data

    ctx = _ctx()
    data = status_data(ctx)
    _out(args, data, render_status(data))
    return 0


def cmd_train(args) -> int:
    from retrain.payloads import ManualRequestPayload
    from retrain.steps.requests import request_retraining, sync_models

    ctx = _ctx()
    sync_models(ctx)
    res = request_retraining(ctx, ManualRequestPayload(model=args.model, reason=args.reason, requested_by=args.actor,
                                                       override_budget=args.override_budget))
    _publish_outbox(ctx)
    print(f"request {res.request_id}: {res.detail}")
    return 0


def cmd_resolve(args, approve: bool) -> int:
    from retrain.steps.decide import resolve_pending

    ctx = _ctx()
    res = resolve_pending(ctx, args.id, approve=approve, actor=args.actor, reason=args.reason or "")
    _publish_outbox(ctx)
    print(f"{res.summary}" + (f"; run {res.run_id}" if res.run_id else ""))
    return 0


def cmd_decisions(args) -> int:
    from retrain.report import table

    ctx = _ctx()
    with ctx.store.tx() as tx:
        rows = tx.decisions(args.model, limit=args.limit)
    data = [{"id": d.id, "at": d.decided_at, "trigger": d.trigger, "verdict": d.verdict, "rules": d.rules,
             "defer_until": d.defer_until, "estimated_cost_usd": d.estimated_cost_usd, "detail": d.detail}
            for d in rows]
    lines = []
    for d in data:
        lines.append(f"{d['at']:%Y-%m-%d %H:%M}  {d['trigger']:<11} {d['verdict'].upper()}"
                     + (f" until {d['defer_until']:%Y-%m-%d %H:%M}" if d["defer_until"] else "") + f"  ({d['id'][:8]})")
        lines.append(table([[r["rule"], "bypassed" if r.get("bypassed") else ("ok" if r["passed"] else "FAIL"),
                             _short(r.get("value")), _short(r.get("limit")), (r.get("detail") or "")[:80]]
                            for r in d["rules"]], ["rule", "verdict", "value", "limit", "detail"]))
        lines.append("")
    _out(args, data, "\n".join(lines) or "no decisions")
    return 0


def cmd_audit(args) -> int:
    ctx = _ctx()
    with ctx.store.tx() as tx:
        rows = tx.audit_events(args.model, limit=args.limit, kind=args.kind)
    data = [{"id": e.id, "at": e.at, "model": e.model, "kind": e.kind, "actor": e.actor, "subject": e.subject,
             "message": e.message, "data": e.data} for e in rows]
    text = "\n".join(f"{e['at']:%Y-%m-%d %H:%M:%S}  {e['kind']:<10} {e['actor']:<12} {e['message']}" for e in data)
    _out(args, data, text or "no events")
    return 0


def cmd_versions(args) -> int:
    from retrain.report import table

    ctx = _ctx()
    with ctx.store.tx() as tx:
        aliases = {a.version: a.alias for a in tx.aliases(args.model).values() if a.version}
        rows = tx.versions(args.model)
    data = [{"version": v.version, "status": "deleted" if v.deleted_at else v.status, "alias": aliases.get(v.version),
             "created_at": v.created_at, "sha256": v.artifact_sha256, "size": v.artifact_size,
             "bump": v.bump_kind, "reason": v.bump_reason, "metrics": v.metrics.get("holdout"),
             "cost_usd": v.cost_usd, "parent": v.parent_version} for v in rows]
    _out(args, data, table([[d["version"], d["alias"] or "", d["status"], f"{d['created_at']:%Y-%m-%d %H:%M}",
                             _short((d["metrics"] or {}).get("accuracy")), d["sha256"][:12], d["reason"][:60]]
                            for d in data], ["version", "alias", "status", "created", "holdout acc", "sha256", "why"]))
    return 0


def cmd_show(args) -> int:
    from retrain.report import to_json

    model, _, version = args.ref.partition("@")
    ctx = _ctx()
    with ctx.store.tx() as tx:
        v = tx.version(model, version) if version else tx.version(model, tx.alias(model, "production") or "")
        if v is None:
            raise RetrainError(f"no version {args.ref}")
        data = {c.name: getattr(v, c.name) for c in v.__table__.columns}
    print(to_json(data))
    return 0


def cmd_history(args) -> int:
    ctx = _ctx()
    with ctx.store.tx() as tx:
        rows = tx.alias_history(args.model, limit=args.limit)
    data = [{"at": h.at, "alias": h.alias, "from": h.from_version, "to": h.to_version, "actor": h.actor,
             "reason": h.reason} for h in rows]
    text = "\n".join(f"{h['at']:%Y-%m-%d %H:%M:%S}  {h['alias']:<10} {h['from'] or '-':>7} -> {h['to'] or '-':<7} "
                     f"{h['actor']:<12} {h['reason']}" for h in data)
    _out(args, data, text or "no alias moves")
    return 0


def cmd_rollback(args) -> int:
    from retrain.steps.promote import rollback

    ctx = _ctx()
    res = rollback(ctx, args.model, args.version, actor=args.actor, reason=args.reason)
    print(f"{args.model}: production {res.previous} -> {res.version}")
    return 0


def cmd_pause(args, paused: bool) -> int:
    ctx = _ctx()
    with ctx.store.tx() as tx:
        tx.set_paused(None if args.all else args.model, paused, args.actor, args.reason, ctx.now())
    print(("paused" if paused else "resumed") + f" automatic retraining for {'all models' if args.all else args.model}")
    return 0


def cmd_costs(args) -> int:
    from retrain.report import table

    ctx = _ctx()
    now = ctx.now()
    policy_cfg = ctx.config.policy
    with ctx.store.tx() as tx:
        rows = tx.cost_rows(since_month=(now - timedelta(days=62)).strftime("%Y-%m"))
    by_day: dict[tuple[str, str], float] = {}
    for r in rows:
        by_day[(r.day, r.model)] = by_day.get((r.day, r.model), 0.0) + r.amount_usd
    day, month = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")
    today = sum(r.amount_usd for r in rows if r.day == day)
    this_month = sum(r.amount_usd for r in rows if r.month == month)
    data = {"today_usd": today, "month_usd": this_month,
            "daily_cap_usd": policy_cfg.get("daily_budget_usd", 10.0),
            "monthly_cap_usd": policy_cfg.get("monthly_budget_usd", 100.0),
            "by_day": [{"day": d, "model": m, "usd": v} for (d, m), v in sorted(by_day.items())]}
    text = table([[d["day"], d["model"], f"{d['usd']:.4f}"] for d in data["by_day"]], ["day", "model", "usd"])
    text += (f"\n\ntoday ${today:.4f} of ${data['daily_cap_usd']:.2f}; "
             f"this month ${this_month:.4f} of ${data['monthly_cap_usd']:.2f}")
    _out(args, data, text)
    return 0


def cmd_drift(args) -> int:
    from retrain.report import table

    ctx = _ctx()
    with ctx.store.tx() as tx:
        row = tx.latest_drift_report(args.model)
        data = None if row is None else {"at": row.at, "version": row.version, "drifted": row.drifted,
                                         "report": row.report}
    if data is None:
        print(f"no drift check yet for {args.model}")
        return 0
    feats = data["report"].get("features", [])
    text = f"drift check of {args.model} {data['version']} at {data['at']:%Y-%m-%d %H:%M}: " \
           f"{'DRIFT' if data['drifted'] else 'no drift'}\n"
    text += table([[f.get("name"), f.get("test"), _short(f.get("statistic")), _short(f.get("p_value")),
                    _short(f.get("p_adjusted")), _short(f.get("effect_size")), "DRIFT" if f.get("drifted") else ""]
                   for f in feats], ["feature", "test", "statistic", "p", "p adjusted", "effect", "verdict"])
    _out(args, data, text)
    return 0


def cmd_bench(args) -> int:
    from retrain.report import to_json

    # A benchmark is a module with run() -> dict: retrain.benchmarks.NAME, or
    # workers.benchmarks.NAME when it needs real Celery workers.
    module = None
    for base in ("retrain.benchmarks", "workers.benchmarks"):
        try:
            module = importlib.import_module(f"{base}.{args.name}")
            break
        except ModuleNotFoundError as exc:
            if exc.name not in (f"{base}.{args.name}", base):
                raise
    if module is None or not hasattr(module, "run"):
        raise RetrainError(f"unknown benchmark {args.name!r}; see README 'Benchmarks' for the list")
    mod, fn = module.__name__, "run"
    result = getattr(importlib.import_module(mod), fn)()
    if args.json:
        print(to_json(result))
    else:
        for k, v in result.items():
            print(f"{k:<28} {v}")
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retrain", description="Automated retraining controller for production models")
    sub = p.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=["upgrade", "current"])
    db.set_defaults(fn=cmd_db)

    demo = sub.add_parser("demo", help="run the whole loop on a simulated clock with no services")
    demo.add_argument("--days", type=float, default=5.0)
    demo.add_argument("--dir", default="retrain-demo", help="where the demo leaves its database and artifacts")
    demo.add_argument("--step-minutes", type=int, default=10)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(fn=cmd_demo)

    def with_json(sp):
        sp.add_argument("--json", action="store_true", help="print JSON for scripts")
        return sp

    with_json(sub.add_parser("status", help="models, production versions, metrics, requests, runs, spend")).set_defaults(fn=cmd_status)

    tr = sub.add_parser("train", help="ask for a retraining now (manual trigger; every rule still applies)")
    tr.add_argument("model")
    tr.add_argument("--reason", default="manual request")
    tr.add_argument("--actor", default="operator")
    tr.add_argument("--override-budget", action="store_true")
    tr.set_defaults(fn=cmd_train)

    for name, approve in (("approve", True), ("reject", False)):
        sp = sub.add_parser(name, help=f"{name} a decision waiting for approval (request or decision id)")
        sp.add_argument("id")
        sp.add_argument("--reason", required=not approve)
        sp.add_argument("--actor", default="operator")
        sp.set_defaults(fn=lambda a, ap=approve: cmd_resolve(a, ap))

    for name, fn in (("decisions", cmd_decisions), ("audit", cmd_audit)):
        sp = with_json(sub.add_parser(name))
        sp.add_argument("model", nargs="?")
        sp.add_argument("--limit", type=int, default=50)
        if name == "audit":
            sp.add_argument("--kind")
        sp.set_defaults(fn=fn)

    for name, fn in (("versions", cmd_versions), ("history", cmd_history), ("drift", cmd_drift)):
        sp = with_json(sub.add_parser(name))
        sp.add_argument("model")
        sp.add_argument("--limit", type=int, default=200)
        sp.set_defaults(fn=fn)

    sh = sub.add_parser("show", help="one version's full record: MODEL@VERSION")
    sh.add_argument("ref")
    sh.set_defaults(fn=cmd_show)

    rb = sub.add_parser("rollback", help="point production at a previous version (default: 'previous')")
    rb.add_argument("model")
    rb.add_argument("version", nargs="?")
    rb.add_argument("--reason", default="manual rollback")
    rb.add_argument("--actor", default="operator")
    rb.set_defaults(fn=cmd_rollback)

    for name, paused in (("pause", True), ("resume", False)):
        sp = sub.add_parser(name, help=f"{name} automatic retraining for a model or --all")
        sp.add_argument("model", nargs="?")
        sp.add_argument("--all", action="store_true")
        sp.add_argument("--reason", default="operator decision")
        sp.add_argument("--actor", default="operator")
        sp.set_defaults(fn=lambda a, pz=paused: cmd_pause(a, pz))

    with_json(sub.add_parser("costs", help="spend per day and model against the caps")).set_defaults(fn=cmd_costs)

    b = with_json(sub.add_parser("bench", help="run a benchmark and print its figures"))
    b.add_argument("name")
    b.set_defaults(fn=cmd_bench)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return p


# Each adds its own subcommands: register(subparsers).
COMMAND_MODULES = (
    "retrain.commands.registry",
    "retrain.commands.rollout",
    "retrain.commands.backtest",
    "retrain.commands.admin",
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except RetrainError as exc:
        print(f"retrain: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("retrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
