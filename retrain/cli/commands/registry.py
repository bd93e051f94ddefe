"""`retrain` subcommands of the model registry: versions, show, history, rollback, gc.

Each prints a table that reads well in a terminal, or with ``--json`` one JSON
document for scripts (times as ISO 8601 strings).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from retrain.cli.commands.common import _ctx, _out, _short, clip, iso_time, non_negative_float, positive_int, with_json
from retrain.core.errors import RetrainError

__all__ = ["register", "render_versions", "render_show", "render_gc"]


def _when(t: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return "-" if t is None else t.strftime(fmt)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


_clip = clip


# ---------------------------------------------------------------- versions
def render_versions(model: str, records: list, policy: Any, primary: str) -> str:
    from retrain.report import table

    rows = []
    for r in records:
        metric = (r.validation or {}).get(primary)
        why = (f"deleted {_when(r.deleted_at, '%Y-%m-%d')}: {r.deleted_reason or ''}" if r.deleted
               else r.bump_reason)
        window = f"{_when(r.data_start, '%m-%d %H:%M')} .. {_when(r.data_end, '%m-%d %H:%M')}" if r.data_start else "-"
        rows.append([r.version, ",".join(r.aliases) or "", r.status, _when(r.created_at), window, r.data_rows,
                     _short(metric) if metric is not None else "-", f"{r.cost_usd:.4f}",
                     "-" if r.deleted else _size(r.artifact_size), r.artifact_sha256[:12], _clip(why, 70)])
    text = table(rows, ["version", "aliases", "status", "created", "data window (UTC)", "rows", f"holdout {primary}",
                        "cost $", "size", "sha256", "why this number"])
    live = sum(1 for r in records if not r.deleted)
    text += (f"\n\n{len(records)} version(s) of {model}: {live} live, {len(records) - live} deleted (record kept)."
             f"\nRetention keeps at most {policy.max_versions} versions and "
             f"{policy.max_age / timedelta(days=1):g} days;"
             " it never deletes a version an alias points to or the rollback target.")
    return text


def cmd_versions(args) -> int:
    from retrain.registry import version_records
    from retrain.steps.retention import retention_policy

    ctx = _ctx()
    with ctx.store.tx() as tx:
        records = version_records(tx, args.model, include_deleted=not args.live)
    if not records and not args.json:
        print(f"no versions of {args.model}")
        return 0
    cfg = ctx.config.models.get(args.model)
    primary = cfg.primary_metric if cfg else "accuracy"
    _out(args, [r.to_json() for r in records],
         render_versions(args.model, records, retention_policy(ctx, args.model), primary))
    return 0


# ---------------------------------------------------------------- show
def render_show(r) -> str:
    def kv(items: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items.items()) or "-"

    lines = [f"{r.model} {r.version}" + (f"  ({', '.join(r.aliases)})" if r.aliases else "")]
    add = lambda k, v: lines.append(f"  {k:<18} {v}")  # noqa: E731
    add("status", r.status + (f" since {_when(r.deleted_at)} UTC: {r.deleted_reason}" if r.deleted else ""))
    add("created", f"{_when(r.created_at, '%Y-%m-%d %H:%M:%S')} UTC")
    add("why this number", r.bump_reason or r.bump_kind)
    add("parent", r.parent_version or "-")
    add("artifact", f"sha256 {r.artifact_sha256}, {r.artifact_size:,} bytes"
        + (" (file removed; record kept)" if r.deleted else ""))
    add("training data", f"{_when(r.data_start)} .. {_when(r.data_end)} UTC, {r.data_rows:,} rows")
    add("data fingerprint", r.data_fingerprint or "-")
    add("features", ", ".join(f if isinstance(f, str) else f"{f[0]}:{f[1]}" for f in r.feature_schema) or "-")
    add("entry point", r.entry_point or "-")
    add("hyperparameters", kv(r.hyperparameters))
    if r.settings:
        add("settings", kv(r.settings))
    add("config fingerprint", r.config_fingerprint or "-")
    add("validation", (kv({k: v for k, v in r.validation.items() if k != "n"})
                       + (f" on {r.holdout_rows:,} held-out rows" if r.holdout_rows else ""))
        if r.validation else "not validated yet")
    add("drift reference", r.reference_sha256 or "-")
    add("holdout sample", r.holdout_sha256 or "-")
    add("git commit", r.git_commit or "unknown")
    add("produced by", f"request {r.request_id or '-'}, decision {r.decision_id or '-'}, run {r.run_id or '-'}")
    add("cost", f"${r.cost_usd:.4f}")
    return "\n".join(lines)


def cmd_show(args) -> int:
    from retrain.registry import resolve_ref, version_record

    ctx = _ctx()
    with ctx.store.tx() as tx:
        model, version = resolve_ref(tx, args.ref)
        record = version_record(tx, model, version)
    _out(args, record.to_json(), render_show(record))
    return 0


# ---------------------------------------------------------------- history
def cmd_history(args) -> int:
    from retrain.registry import aliases_at, describe_alias_state
    from retrain.report import table

    ctx = _ctx()
    if args.at:
        at = args.at
        with ctx.store.tx() as tx:
            states = aliases_at(tx, args.model, at)
        prod = states.get("production")
        data = {"model": args.model, "at": at, "served_by": prod.version if prod else None,
                "aliases": {k: v.to_json() for k, v in states.items()}}
        head = (f"{args.model} at {at:%Y-%m-%d %H:%M:%S} UTC: "
                + (f"served by {prod.version}" if prod and prod.version else "no version in production"))
        body = table([[name, s.version or "-", _when(s.since, "%Y-%m-%d %H:%M:%S"), s.actor, _clip(s.reason, 80)]
                      for name, s in sorted(states.items())], ["alias", "version", "since", "moved by", "why"])
        _out(args, data, head + "\n\n" + body + (f"\n\nproduction: {describe_alias_state(prod)}" if prod else ""))
        return 0
    with ctx.store.tx() as tx:
        rows = tx.aliases.moves(args.model, alias=args.alias, limit=args.limit)
    moves = [{"at": h.at, "alias": h.alias, "from": h.from_version, "to": h.to_version, "actor": h.actor,
              "reason": h.reason} for h in rows]
    text = table([[_when(h["at"], "%Y-%m-%d %H:%M:%S"), h["alias"], h["from"] or "-", "->", h["to"] or "-",
                   h["actor"], _clip(h["reason"], 80)] for h in moves],
                 ["at (UTC)", "alias", "from", "", "to", "actor", "why"])
    _out(args, moves, text if moves else f"no alias moves for {args.model}")
    return 0


# ---------------------------------------------------------------- rollback
class RollbackRefusedError(RetrainError):
    """Raised when a rollback's target failed a check (validation, shadow, canary) and --force was not given."""


def rollback_objection(tx, model: str, version: str) -> str | None:
    """Why ``version`` should not serve again, with its figures, or None: it failed validation,
    was rejected in shadow, or was rolled back as a canary."""
    row = tx.versions.get(model, version)
    if row is None:
        return None
    for ro in tx.rollouts.newest(model, limit=200):
        if ro.candidate_version != version:
            continue
        if ro.phase == "rolled_back":
            return f"{version} was rolled back as a canary at {ro.finished_at:%Y-%m-%d %H:%M} UTC: {ro.outcome}"
        if ro.phase == "rejected":
            return f"{version} was rejected in shadow at {ro.finished_at:%Y-%m-%d %H:%M} UTC: {ro.outcome}"
    gate = (row.metrics or {}).get("gate") or {}
    if row.status == "rejected" or gate.get("verdict") == "rejected":
        return f"{version} failed validation: {gate.get('detail') or 'status rejected'}"
    return None


def cmd_rollback(args) -> int:
    from retrain.registry import resolve_rollback
    from retrain.steps.promote import rollback

    ctx = _ctx()
    with ctx.store.tx() as tx:
        target = resolve_rollback(tx, args.model, args.version)
        objection = rollback_objection(tx, args.model, target)
    reason, extra = args.reason, None
    if objection and not args.force:
        raise RollbackRefusedError(f"refused: {objection}; serve it anyway with --force (audited)")
    if objection:
        reason = f"{args.reason} (forced with --force past: {objection})"
        extra = {"forced": True, "objection": objection}
    res = rollback(ctx, args.model, target, actor=args.actor, reason=reason, data=extra)
    data = {"model": args.model, "status": res.status, "production": res.version, "replaced": res.previous,
            "detail": res.detail, "forced_past": objection}
    if res.status == "rolled_back":
        text = f"{args.model}: {res.detail}" + (f" (previous is now {res.previous})" if res.previous else "")
    else:
        text = f"{args.model}: {res.detail}"
    if objection:
        text += f"\nforced past: {objection} (audited)"
    _out(args, data, text)
    return 0


# ---------------------------------------------------------------- gc
def render_gc(report) -> str:
    from retrain.report import table

    parts = []
    title = "Retention (dry run: nothing removed)" if report.dry_run else "Retention"
    parts.append(title)
    parts.append(table([[m.model, f"{m.max_versions} / {m.max_age_days:g} d", len(m.kept), len(m.deleted),
                         _clip("; ".join(f"{v} {why}" for v, why in m.protected.items()), 90) or "-"]
                        for m in report.models], ["model", "keep at most", "kept", "deleted", "protected"])
                 if report.models else "  no versions")
    deleted = report.deleted_versions
    parts.append("\nVersions " + ("to delete" if report.dry_run else "deleted (tombstones: records and history kept)"))
    parts.append(table([[d.model, d.version, _when(d.created_at), _clip(d.reason, 90)] for d in deleted],
                       ["model", "version", "created", "why"]) if deleted else "  none")
    parts.append("\nArtifact files " + ("to remove" if report.dry_run else "removed"))
    parts.append(table([[f.sha256[:16], _size(f.size), f.what] for f in report.files], ["sha256", "size", "what"])
                 if report.files else "  none")
    parts.append(f"\n{report.summary()}.")
    return "\n".join(parts)


def cmd_gc(args) -> int:
    from retrain.steps.retention import run_retention

    ctx = _ctx()
    report = run_retention(ctx, args.models or None, actor=args.actor, dry_run=args.dry_run,
                           orphans=not args.no_orphans, grace=timedelta(minutes=args.grace_minutes))
    _out(args, report.to_json(), render_gc(report))
    return 0


# ---------------------------------------------------------------- parser
def register(sub) -> None:
    """Add this area's subcommands to the parser."""

    v = with_json(sub.add_parser("versions", help="a model's versions: numbers and why, aliases, data, metrics, cost"))
    v.add_argument("model", help="a configured model")
    v.add_argument("--live", action="store_true", help="leave out deleted versions (tombstones)")
    v.set_defaults(fn=cmd_versions)

    sh = with_json(sub.add_parser("show", help="one version's full record: MODEL@VERSION or MODEL@ALIAS"))
    sh.add_argument("ref", metavar="MODEL@VERSION", help="e.g. direction@1.2.0 or direction@production")
    sh.set_defaults(fn=cmd_show)

    h = with_json(sub.add_parser("history", help="alias moves (what served when); --at T: what served at time T"))
    h.add_argument("model", help="a configured model")
    h.add_argument("--at", type=iso_time, help="ISO time, e.g. 2026-01-06T12:00 (UTC unless an offset is given)")
    h.add_argument("--alias", help="only this alias's moves")
    h.add_argument("--limit", type=positive_int, default=200, help="the newest N moves (at least 1; default 200)")
    h.set_defaults(fn=cmd_history)

    rb = with_json(sub.add_parser("rollback", help="serve a retained version again (default: 'previous')"))
    rb.add_argument("model", help="a configured model")
    rb.add_argument("version", nargs="?", help="the version to serve (default: 'previous', or withdraw the canary)")
    rb.add_argument("--reason", default="manual rollback", help="why (audited)")
    rb.add_argument("--actor", default="operator", help="who rolls back (audited)")
    rb.add_argument("--force", action="store_true", help="serve a version that failed validation, was rejected "
                    "in shadow or rolled back as a canary (refused without it; audited)")
    rb.set_defaults(fn=cmd_rollback)

    gc = with_json(sub.add_parser("gc", help="apply retention now and remove orphan artifacts; "
                                             "reports what it removed"))
    gc.add_argument("models", nargs="*", metavar="MODEL", help="only these models (default: all)")
    gc.add_argument("--dry-run", action="store_true", help="show what would be removed; change nothing")
    gc.add_argument("--no-orphans", action="store_true", help="do not collect unreferenced artifact files")
    gc.add_argument("--grace-minutes", type=non_negative_float, default=60.0,
                    help="leave unreferenced files younger than this (a training may be about to register them)")
    gc.add_argument("--actor", default="operator", help="who runs it (audited)")
    gc.set_defaults(fn=cmd_gc)
