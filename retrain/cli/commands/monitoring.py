"""``retrain exporter`` (Prometheus metrics) and ``retrain notifications`` (deliveries and failures)."""

from __future__ import annotations

import signal
import sys
import threading

from retrain.cli.commands.common import _ctx, _out, clip, non_negative_float, port, positive_int, with_json

__all__ = ["register", "cmd_exporter", "cmd_notifications"]


def cmd_exporter(args) -> int:
    from retrain.monitoring import logs
    from retrain.monitoring.exporter import serve

    logs.configure()
    ctx = _ctx()
    exporter, server = serve(ctx, args.port, args.addr, cache_s=args.cache_s)
    print(f"retrain exporter: http://{args.addr}:{args.port}/metrics ({len(ctx.config.models)} models)", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.shutdown()
    exporter.stop()
    print("retrain exporter: stopped", file=sys.stderr)
    return 0


def cmd_notifications(args) -> int:
    from retrain.report import table

    ctx = _ctx()
    status = ["failed", "retrying"] if args.failed else None
    with ctx.store.tx() as tx:
        rows = tx.notifications.newest(status=status, model=args.model, limit=args.limit)
    data = [{"id": r.id, "event_id": r.event_id, "event": r.event, "model": r.model, "target": r.target,
             "status": r.status, "attempts": r.attempts, "created_at": r.created_at, "delivered_at": r.delivered_at,
             "next_attempt_at": r.next_attempt_at, "error": r.last_error, "title": r.title} for r in rows]
    text = table([[r["id"], f"{r['created_at']:%Y-%m-%d %H:%M}", r["event"], r["model"] or "-", r["target"],
                   r["status"], r["attempts"], clip(r["error"], 60)] for r in data],
                 ["id", "at", "event", "model", "target", "status", "tries", "last error"]) if data \
        else "no notifications" + (" failing" if args.failed else "")
    _out(args, data, text)
    return 0


def register(sub) -> None:
    e = sub.add_parser("exporter", help="serve Prometheus metrics read from the database (/metrics)")
    e.add_argument("--port", type=port, default=9808, help="TCP port to listen on (default 9808)")
    e.add_argument("--addr", default="0.0.0.0", help="address to listen on")
    e.add_argument("--cache-s", type=non_negative_float, default=5.0,
                   help="scrapes within this many seconds of the last one share its text (a Prometheus pair)")
    e.set_defaults(fn=cmd_exporter)
    n = with_json(sub.add_parser("notifications", help="notification deliveries, newest first, and failures"))
    n.add_argument("--failed", action="store_true", help="only deliveries failing or given up")
    n.add_argument("--model", help="only this model's notifications")
    n.add_argument("--limit", type=positive_int, default=50, help="the newest N (at least 1; default 50)")
    n.set_defaults(fn=cmd_notifications)
