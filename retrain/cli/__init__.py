"""``retrain``: the operator's command line.

Reads the same ``RETRAIN_*`` settings as the workers. Commands that change state
write to the database and leave follow-up messages in the outbox; they are
published to the broker at once when it is reachable, else by the relay on beat.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from retrain.core.errors import RetrainError

__all__ = ["main"]


from retrain.cli.commands.common import _ctx, _out, _short, with_json


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
    return demo.run_demo(days=args.days, home=Path(args.dir), step_minutes=args.step_minutes, quiet=args.quiet,
                         backtest=args.backtest)


def cmd_status(args) -> int:
    from retrain.report import render_status, status_data

    ctx = _ctx()
    data = status_data(ctx)
    _out(args, data, render_status(data))
    return 0


# train, approve, reject, decisions, audit, pause, resume, costs: retrain.cli.commands.admin


def cmd_drift(args) -> int:
    from retrain.report import table

    ctx = _ctx()
    with ctx.store.tx() as tx:
        row = tx.monitoring.latest_drift_report(args.model)
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
    result = module.run()
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
    demo.add_argument("--backtest", action="store_true",
                      help="end with a backtest comparison of auto, never and every:1d on the same market")
    demo.set_defaults(fn=cmd_demo)

    status = with_json(sub.add_parser("status", help="models, production versions, metrics, requests, runs, spend"))
    status.set_defaults(fn=cmd_status)

    drift = with_json(sub.add_parser("drift", help="the model's latest drift check, feature by feature"))
    drift.add_argument("model")
    drift.set_defaults(fn=cmd_drift)

    # versions, show, history, rollback and gc: retrain.cli.commands.registry

    # train, approve, reject, decisions, audit, pause, resume, costs: retrain.cli.commands.admin

    b = with_json(sub.add_parser("bench", help="run a benchmark and print its figures"))
    b.add_argument("name")
    b.set_defaults(fn=cmd_bench)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return p


# Each adds its own subcommands: register(subparsers).
COMMAND_MODULES = (
    "retrain.cli.commands.registry",
    "retrain.cli.commands.rollout",
    "retrain.cli.commands.backtest",
    "retrain.cli.commands.admin",
)


#: Exit status when the reader of our output went away (``retrain audit | head -1``):
#: what a Unix tool killed by SIGPIPE reports (128 + 13), so ``set -o pipefail`` scripts
#: see the same thing as with ``cat`` or ``grep``.
EXIT_CLOSED_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    """Run one command; a known error ends as ``retrain: ...`` on stderr and exit status 2.

    A database or broker that cannot be used is translated here, for every command,
    into one line naming its URL (password masked) and what to check
    (:func:`retrain.cli.commands.common.unreachable`); any other unexpected error keeps its
    traceback. A closed stdout pipe ends the command quietly.
    """
    args = build_parser().parse_args(argv)
    _name_failing_databases()
    try:
        code = int(args.fn(args) or 0)
        sys.stdout.flush()  # a closed pipe must show here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        print("retrain: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # broad to translate: a service out of reach or ours; anything else is raised again
        from retrain.cli.commands.common import unreachable

        error = unreachable(exc) or (exc if isinstance(exc, RetrainError) else None)
        if error is None:
            raise
        print(f"retrain: {error}", file=sys.stderr)
        return 2


def _name_failing_databases() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from retrain.cli.commands.common import note_database_url

    if not event.contains(Engine, "handle_error", note_database_url):
        event.listen(Engine, "handle_error", note_database_url)


def _closed_pipe() -> int:
    # The Python docs' recipe: point stdout at devnull so that the interpreter's final
    # flush of what is still buffered cannot raise a second BrokenPipeError at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file (captured): nothing left to flush
        pass
    return EXIT_CLOSED_PIPE


if __name__ == "__main__":
    sys.exit(main())
