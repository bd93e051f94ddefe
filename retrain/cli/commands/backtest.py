"""`retrain` subcommands: backtest.

``retrain backtest DATA --time COL --label COL [--return COL] [--features A,B,...]
[--config FILE] [--policy auto|never|every:<duration>] [--compare P,P,...]
[--label-delay D] [--warmup D] [--period D] [--sweep-every D] [--approve-after D|never]
[--keep-state] [--jobs N] [--quiet] --out DIR``

Replays DATA through the same steps the workers run, on a simulated clock, once per
policy, and writes ``DIR/report.json`` and ``DIR/report.html`` (see
:mod:`retrain.backtest` for the report's schema). Ctrl-C stops cleanly: the report
is written with what was replayed and marked partial (exit code 130), and so does SIGTERM
(exit code 143); the temporary databases are removed either way. A signal that comes once
every replay has finished waits until the report is written in full.
"""

from __future__ import annotations

import sys

__all__ = ["register", "cmd_backtest"]


#: Exit status after SIGTERM (128 + 15), as after Ctrl-C it is 130 (128 + 2).
EXIT_TERMINATED = 143
EXIT_INTERRUPTED = 130


def cmd_backtest(args) -> int:
    from retrain.backtest.run import Terminated, stop_on_sigterm

    with stop_on_sigterm() as state:
        try:
            code = _backtest(args)
        except Terminated:  # before the replay began (reading the data): nothing to report
            print("retrain: terminated before the replay began; no report", file=sys.stderr)
            return EXIT_TERMINATED
    if state["terminated"]:
        if code == 0:  # it came once every replay had finished: the report is whole
            print("retrain: terminated; every replay had finished, the report is complete", file=sys.stderr)
        return EXIT_TERMINATED
    return code


def _backtest(args) -> int:
    from retrain.backtest.data import load_data
    from retrain.backtest.policies import parse_policies
    from retrain.backtest.run import BacktestSettings, ProgressBar, hold_signals, run_backtest, summary_text
    from retrain.config import load_config

    features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
    config = load_config(args.config) if args.config else None
    if features is None and config is not None and config.models:
        features = list(next(iter(config.models.values())).features)
    data = load_data(args.data, time=args.time, label=args.label, ret=args.ret, features=features, key=args.key)
    specs = parse_policies(args.policy, args.compare)
    settings = BacktestSettings(policies=[s.label for s in specs], config=config, label_delay=args.label_delay,
                                warmup=args.warmup, period=args.period, sweep_every=args.sweep_every,
                                approve_after=args.approve_after, keep_state=args.keep_state, jobs=args.jobs)
    bar = None if args.quiet else ProgressBar(len(specs))
    report = run_backtest(data, settings, out=args.out, progress=bar if bar is not None else False)
    with hold_signals():  # the report is written: a signal now must not cut its summary short
        print(summary_text(report))
        print(f"\nreport: {args.out}/report.json, {args.out}/report.html")
    if report.get("partial"):
        print("retrain: interrupted; the report covers what was replayed (partial)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def register(sub) -> None:
    """Add this area's subcommands to the parser."""
    from retrain.cli.commands.common import plain, positive_int

    p = sub.add_parser("backtest", help="replay a labelled history through the real policy; compare policies",
                       description=plain(__doc__.split("\n\n", 2)[2]).replace("DIR/", "OUT/") if __doc__ else None)
    p.add_argument("data", help="CSV or Parquet file, one row per prediction event")
    p.add_argument("--time", required=True, help="time column (epoch seconds/ms or ISO 8601; naive is UTC)")
    p.add_argument("--label", required=True, help="binary outcome column (0/1) the model predicts")
    p.add_argument("--return", dest="ret", help="the asset's return over the prediction's horizon (for Sharpe)")
    p.add_argument("--features", help="comma-separated feature columns (default: every other numeric column, "
                   "or the model's features with --config)")
    p.add_argument("--key", help="routing key column for canary routing (default: the row number)")
    p.add_argument("--config", help="model file: its first model's entry point, thresholds and policy "
                   "(default: the example classifier with the default policy)")
    p.add_argument("--policy", default="auto", help="auto | never | every:<duration> (default auto)")
    p.add_argument("--compare", help="more policies to run on the same data, e.g. never,every:1d,every:7d")
    p.add_argument("--label-delay", default="0s", help="how long after a prediction its label is known (default 0s)")
    p.add_argument("--warmup", help="history before the first model is trained (default: 1d, or a quarter of "
                   "a shorter history)")
    p.add_argument("--period", default="1d", help="period of accuracy_by_period (default 1d)")
    p.add_argument("--sweep-every", default=None, help="simulated interval of the monitoring sweep (default: 5m "
                   "on the default 240-minute window, wider windows sweep less often)")
    p.add_argument("--approve-after", default="30m", help="the simulated operator approves requests waiting "
                   "for approval after this long; 'never' leaves them waiting (default 30m)")
    p.add_argument("--keep-state", action="store_true", help="keep each policy's database and artifacts under "
                   "OUT/state/<policy> (inspect with RETRAIN_HOME=OUT/state/auto retrain status)")
    p.add_argument("--jobs", type=positive_int, default=None, help="policies replayed at once, each in its own process "
                   "(default: one per CPU, at most one per policy; 1: one after the other in this process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output directory for report.json, report.html and the plots")
    p.set_defaults(fn=cmd_backtest)
