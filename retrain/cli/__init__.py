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


from retrain.cli.commands.common import (
    _ctx,
    _out,
    _short,
    check_models,
    demo_now,
    positive_float,
    positive_int,
    with_json,
)

#: Exit statuses, as the help's epilog documents them.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

EPILOG = """\
exit status:
  0    the command did what was asked
  1    it failed: a database or broker out of reach, a schema to upgrade, a refusal
       (e.g. a rollback to a version that failed its checks, without --force)
  2    usage: a bad option or value, or an unknown object (model, version, request,
       benchmark); the message names it and what exists
  130  interrupted (Ctrl-C); 141 stdout closed (| head); 143 terminated (SIGTERM)

Settings come from RETRAIN_* environment variables (RETRAIN_HOME, RETRAIN_DATABASE_URL,
RETRAIN_BROKER_URL, RETRAIN_CONFIG, ...); see the README's reference.
"""


# ---------------------------------------------------------------- commands
def cmd_db(args) -> int:
    from retrain.settings import load_settings
    from retrain.storage.db import Database
    from retrain.storage.schema import current_revision, head_revision, upgrade

    s = load_settings()
    s.ensure_home()
    engine = Database(s.database_url).engine
    url = engine.url.render_as_string(hide_password=True)
    if args.action == "upgrade":
        upgrade(engine)
        rev = current_revision(engine)
        _out(args, {"database": url, "current": rev, "head": rev}, f"database {url} at revision {rev}")
    else:
        cur, head = current_revision(engine), head_revision(engine)
        _out(args, {"database": url, "current": cur, "head": head},
             f"current {cur or 'none'}, head {head}" + ("" if cur == head else "  -> run: retrain db upgrade"))
    return 0


def cmd_demo(args) -> int:
    demo = importlib.import_module("workers.demo")
    return demo.run_demo(days=args.days, home=Path(args.dir), step_minutes=args.step_minutes, quiet=args.quiet,
                         backtest=args.backtest)


def cmd_status(args) -> int:
    from retrain.report import render_status, status_data

    ctx = _ctx()
    now = demo_now(ctx)
    data = status_data(ctx, now)
    if args.model:  # one model: its row, runs and requests (spend and slots stay global)
        for key in ("models", "runs", "requests"):
            data[key] = [r for r in data[key] if r.get("model") == args.model]
    text = render_status(data)
    if now is not None:
        data["clock"] = "demo"
        text = f"(a demo home: figures as of its simulated clock, {now:%Y-%m-%d %H:%M} UTC)\n" + text
    _out(args, data, text)
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
        _out(args, None, f"no drift check yet for {args.model}")
        return 0
    feats = data["report"].get("features", [])
    text = f"drift check of {args.model} {data['version']} at {data['at']:%Y-%m-%d %H:%M}: " \
           f"{'DRIFT' if data['drifted'] else 'no drift'}\n"
    text += table([[f.get("name"), f.get("test"), _short(f.get("statistic")), _short(f.get("p_value")),
                    _short(f.get("p_adjusted")), _short(f.get("effect_size")),
                    "DRIFT" if f.get("drifted") else "none"]
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
        from retrain.core.errors import PayloadError

        raise PayloadError(f"unknown benchmark {args.name!r}; benchmarks: {', '.join(benchmark_names())}")
    result = module.run()
    if args.json:
        print(to_json(result))
    else:
        for k, v in result.items():
            print(f"{k:<28} {v}")
    return 0


def benchmark_names() -> list[str]:
    """The benchmarks ``retrain bench`` runs: the modules of retrain/benchmarks and workers/benchmarks with run()."""
    import pkgutil
    import re

    names: set[str] = set()
    for base in ("retrain.benchmarks", "workers.benchmarks"):
        try:
            pkg = importlib.import_module(base)
        except ImportError:  # workers/ not installed next to retrain/
            continue
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_") or info.ispkg:
                continue
            path = Path(pkg.__path__[0]) / f"{info.name}.py"
            # Read, not imported: a benchmark's imports may be heavy.
            if path.exists() and re.search(r"^def run\(", path.read_text(), re.M):
                names.add(info.name)
    return sorted(names)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("retrain")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retrain", description="Automated retraining controller for production models",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"retrain {_version()}",
                   help="print the installed version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = with_json(sub.add_parser("db", help="database migrations: upgrade to the code's schema, or show the "
                                             "current one"))
    db.add_argument("action", choices=["upgrade", "current"],
                    help="upgrade: migrate to the newest schema; current: show the database's revision")
    db.set_defaults(fn=cmd_db)

    demo = sub.add_parser("demo", help="run the whole loop on a simulated clock with no services")
    demo.add_argument("--days", type=positive_float, default=5.0, help="simulated days (default 5)")
    demo.add_argument("--dir", default="retrain-demo", help="where the demo leaves its database and artifacts "
                      "(replaced if it exists; default ./retrain-demo)")
    demo.add_argument("--step-minutes", type=positive_int, default=10,
                      help="simulated minutes per step of the trading app (default 10)")
    demo.add_argument("--quiet", action="store_true", help="print only the final timeline")
    demo.add_argument("--backtest", action="store_true",
                      help="end with a backtest comparison of auto, never and every:1d on the same market")
    demo.set_defaults(fn=cmd_demo)

    status = with_json(sub.add_parser("status", help="models, production versions, metrics, requests, runs, spend"))
    status.add_argument("model", nargs="?", help="only this model (default: every model)")
    status.set_defaults(fn=cmd_status)

    drift = with_json(sub.add_parser("drift", help="the model's latest drift check, feature by feature",
                                     description="The model's latest drift check: per feature its test, "
                                                 "statistic, p-value (raw and adjusted), effect size and verdict."))
    drift.add_argument("model", help="a configured model")
    drift.set_defaults(fn=cmd_drift)

    # versions, show, history, rollback and gc: retrain.cli.commands.registry

    # train, approve, reject, decisions, audit, pause, resume, costs: retrain.cli.commands.admin

    b = with_json(sub.add_parser("bench", help="run a benchmark and print its figures"))
    b.add_argument("name", help="the benchmark: a module of retrain/benchmarks or workers/benchmarks "
                   "(an unknown name lists them)")
    b.set_defaults(fn=cmd_bench)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return p


#: Where each command names models: the argument's dest, and whether it is MODEL@VERSION.
_MODEL_ARGS = (("model", False), ("models", False), ("ref", True))


def _named_models(args) -> list[str]:
    names: list[str] = []
    for dest, is_ref in _MODEL_ARGS:
        v = getattr(args, dest, None)
        if v is None or getattr(args, "command", None) in ("backtest", "demo", "bench"):
            continue
        for item in (v if isinstance(v, list) else [v]):
            if isinstance(item, str) and item:
                names.append(item.split("@", 1)[0] if is_ref else item)
    return names


# Each adds its own subcommands: register(subparsers).
COMMAND_MODULES = (
    "retrain.cli.commands.registry",
    "retrain.cli.commands.rollout",
    "retrain.cli.commands.backtest",
    "retrain.cli.commands.admin",
    "retrain.cli.commands.monitoring",
)


#: Exit status when the reader of our output went away (``retrain audit | head -1``):
#: what a Unix tool killed by SIGPIPE reports (128 + 13), so ``set -o pipefail`` scripts
#: see the same thing as with ``cat`` or ``grep``.
EXIT_CLOSED_PIPE = 141


#: Modules only the controller needs (``pip install 'retrain[server]'``); the client's install lacks them.
SERVER_MODULES = frozenset({"celery", "alembic", "psycopg2", "sklearn", "scipy", "psutil", "pydantic",
                            "pydantic_settings", "croniter", "flower", "matplotlib", "prometheus_client", "apprise"})


def main(argv: list[str] | None = None) -> int:
    """Run one command (:func:`run`); on an install without the controller's packages (the trading
    app's ``retrain[client]``), say which extra to install instead of a traceback."""
    try:
        return run(argv)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in SERVER_MODULES:
            raise
        print(f"retrain: the command line needs the controller's packages ({exc.name} is not installed): "
              "pip install 'retrain[server]'", file=sys.stderr)
        return EXIT_FAILURE


def run(argv: list[str] | None = None) -> int:
    """Run one command; a known error ends as ``retrain: ...`` on stderr and exit status 1 or 2 (:data:`EPILOG`).

    A database or broker that cannot be used is translated here, for every command,
    into one line naming its URL (password masked) and what to check
    (:func:`retrain.cli.commands.common.unreachable`); any other unexpected error keeps its
    traceback. A closed stdout pipe ends the command quietly.
    """
    args = build_parser().parse_args(argv)
    _name_failing_databases()
    try:
        if names := _named_models(args):
            check_models(names)
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
        return exit_status(error)


def exit_status(error: RetrainError) -> int:
    """2 for usage (a bad value, an unknown object: :class:`PayloadError`, :class:`ConfigError`), else 1."""
    from retrain.core.errors import ConfigError, PayloadError

    return EXIT_USAGE if isinstance(error, (PayloadError, ConfigError)) else EXIT_FAILURE


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
