"""Run one or several policies over the same rows and assemble the report.

Each policy replays in its own fresh SQLite database and artifact store, in a
temporary directory removed afterwards (``keep_state`` keeps them under
``OUT/state/<policy>`` so that ``RETRAIN_HOME=... retrain status`` can inspect one).
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from retrain.backtest.data import ReplayData, load_data
from retrain.backtest.durations import format_duration, parse_duration
from retrain.backtest.parallel import default_jobs, run_parallel
from retrain.backtest.policies import DEFAULT_MODEL, PolicySpec, default_config, parse_policy, widen_for_rate
from retrain.backtest.replay import ReplayOptions, replay, template_database
from retrain.backtest.summary import data_drift, policy_report, timeline_width
from retrain.config import RetrainConfig, load_config
from retrain.core.clock import monotonic
from retrain.core.errors import ConfigError

__all__ = ["BacktestSettings", "run_backtest", "run_comparison", "example_data", "summary_text", "write_report",
           "ProgressBar", "SCHEMA_VERSION", "default_sweep", "Terminated", "stop_on_sigterm", "hold_signals"]

SCHEMA_VERSION = 1


@dataclass
class BacktestSettings:
    """Everything a backtest needs besides the rows; durations as text or timedelta."""

    policies: Sequence[str] = ("auto",)
    config: str | Path | RetrainConfig | None = None
    label_delay: str | timedelta = "0s"
    warmup: str | timedelta | None = None
    period: str | timedelta = "1d"
    sweep_every: str | timedelta | None = None  # None: see default_sweep
    approve_after: str | timedelta | None = "30m"
    keep_state: bool = False
    jobs: int | None = None  # policies replayed at once, each in its own process; None: one per CPU
    extra: dict[str, Any] = field(default_factory=dict)


def _resolve(data: ReplayData, s: BacktestSettings) -> tuple[RetrainConfig, str, ReplayOptions, list[PolicySpec],
                                                             list[str]]:
    delay = parse_duration(s.label_delay, "--label-delay")
    if s.warmup is None:
        # One day, or a quarter of the history when it is shorter than four days.
        warmup = min(timedelta(days=1), timedelta(minutes=max(1, round(data.span.total_seconds() / 240))))
    else:
        warmup = parse_duration(s.warmup, "--warmup")
    if warmup <= timedelta(0) or warmup >= data.span:
        raise ConfigError(f"--warmup: {format_duration(warmup)} must be positive and shorter than the data's span "
                          f"({format_duration(timedelta(seconds=round(data.span.total_seconds())))})")
    sweep = None if s.sweep_every in (None, "auto") else parse_duration(s.sweep_every, "--sweep-every")
    if sweep is not None and sweep < timedelta(seconds=1):
        raise ConfigError("--sweep-every: must be at least 1s")
    period = parse_duration(s.period, "--period")
    if period < timedelta(minutes=1):
        raise ConfigError("--period: must be at least 1m")
    approve = None if s.approve_after in (None, "never") else parse_duration(s.approve_after, "--approve-after")
    widened: list[str] = []
    if s.config is None:
        config = default_config(data.features, data.rows_per_minute, warmup)
        model = DEFAULT_MODEL
    else:
        config = s.config if isinstance(s.config, RetrainConfig) else load_config(s.config)
        if not config.models:
            raise ConfigError(f"{config.source}: no model configured")
        model = next(iter(config.models))
        cfg = config.model(model)
        if tuple(cfg.features) != tuple(data.features):
            raise ConfigError(f"--features: model {model} of {config.source} expects {', '.join(cfg.features)}; "
                              f"the data gives {', '.join(data.features)}")
        # Slow streams get the same widened trigger windows as without --config, where the file is silent.
        config, widened = widen_for_rate(config, model, data.rows_per_minute, warmup)
    if sweep is None:
        sweep = default_sweep(config.model(model).thresholds.window_minutes)
    opts = ReplayOptions(label_delay=delay, warmup=warmup, sweep_every=sweep, approve_after=approve, period=period)
    specs: list[PolicySpec] = []
    for p in s.policies:
        spec = parse_policy(p)
        if spec not in specs:  # every:24h after every:1d is the same policy: the first spelling stays
            specs.append(spec)
    if not specs:
        raise ConfigError("--policy: no policy to run")
    return config, model, opts, specs, widened


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process gets SIGTERM inside :func:`stop_on_sigterm`: the
    replay stops there as on Ctrl-C, and the partial report is written."""


# The state of the innermost stop_on_sigterm block, if any (main thread only).
_sigterm_state: dict[str, bool] | None = None


@contextmanager
def stop_on_sigterm():
    """Within the block, SIGTERM stops a backtest as Ctrl-C does (a partial report, the temporary
    folder removed) instead of killing it where it stands. The first SIGTERM raises
    :class:`Terminated`; later ones are ignored while the report is written. A SIGTERM that comes
    once every replay has finished (while the report is written and the temporary folder removed)
    raises nothing: the report is written in full. Yields a dict whose ``"terminated"`` says whether
    a SIGTERM came. Only the main thread can install it: elsewhere, nothing changes.
    """
    global _sigterm_state
    state = {"terminated": False}

    def on_term(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        state["terminated"] = True
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous, outer = signal.signal(signal.SIGTERM, on_term), _sigterm_state
    _sigterm_state = state
    try:
        yield state
    finally:
        _sigterm_state = outer
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def hold_signals():
    """SIGINT and SIGTERM wait until the block ends: once the replays are over, writing the report
    and removing the temporary folder are not cut short.

    Within the block a signal is only noted (Python-level handlers: a signal the OS hands to
    another thread, such as a training's meter, is noted all the same). At the end, a SIGTERM
    inside :func:`stop_on_sigterm` is recorded there (the command exits 143 with the full report),
    and otherwise each noted signal is raised again for the handler of before the block: a
    SIGINT becomes KeyboardInterrupt after the report, as the user asked; an unhandled SIGTERM
    ends the process.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []

    def note(signum, frame):
        came.append(signum)

    before = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        if signal.SIGTERM in came:
            if _sigterm_state is not None:
                _sigterm_state["terminated"] = True
            elif before[signal.SIGTERM] is not signal.SIG_IGN:
                signal.raise_signal(signal.SIGTERM)
        if signal.SIGINT in came and before[signal.SIGINT] is not signal.SIG_IGN:
            signal.raise_signal(signal.SIGINT)


def default_sweep(window_minutes: int) -> timedelta:
    """Sweep about 50 times per performance window: every 5 minutes on the default 240-minute window,
    less often on the wider windows of slow streams (detection there takes hours anyway)."""
    minutes = 5 * math.ceil(window_minutes / 48 / 5)
    return timedelta(minutes=min(60, max(5, minutes)))


class ProgressBar:
    """A one-line text bar on stderr, redrawn each percent (a line per 10 % when not a terminal), over all
    the policies: the share of their simulated time replayed so far."""

    def __init__(self, total_policies: int, out: TextIO | None = None, width: int = 30) -> None:
        self.total = max(total_policies, 1)
        self.out = out or sys.stderr
        self.width = width
        self.index = 0
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self._last = -1
        self._done: dict[str, float] = {}  # each policy's fraction done (policies may run side by side)

    def next_policy(self) -> None:
        self.index += 1

    def __call__(self, label: str, fraction: float, now, trainings: int) -> None:
        self._done[label] = max(fraction, self._done.get(label, 0.0))
        overall = min(1.0, sum(self._done.values()) / self.total)
        pct = int(overall * 100)
        if pct == self._last or (not self.tty and pct // 10 == self._last // 10 and fraction < 1.0):
            return
        self._last = pct
        filled = int(self.width * overall)
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {pct:3d}%  {label:<12} {now:%Y-%m-%d %H:%M}  "
                f"{trainings} training(s)")
        if self.tty:
            self.out.write("\r" + line)
            if overall >= 1.0:
                self.out.write("\n")
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty and 0 <= self._last < 100:
            self.out.write("\n")
            self.out.flush()


def _one_policy(data: ReplayData, config: RetrainConfig, model: str, spec: PolicySpec, opts: ReplayOptions,
                workroot: Path, template: Path, keep: Path | None, progress) -> dict[str, Any]:
    """Replay one policy and read its report back: ``{report, config, partial}`` (``report`` None when
    interrupted before anything was replayed). ``keep``: where to copy its state once finished."""
    workdir = workroot / spec.label.replace(":", "-")
    outcome = None
    result: dict[str, Any] = {"report": None, "config": None, "partial": False}
    try:
        outcome = replay(data, config, model, spec, opts, workdir, template, progress)
        result["report"] = policy_report(data, outcome, opts)
        result["config"] = _effective(outcome.config, model)
    except KeyboardInterrupt:
        # Interrupted while reading back: report what there is, nothing more.
        result["partial"] = True
        if outcome is not None:
            result["report"] = {"policy": spec.label, "partial": True, "rows": len(data)}
    finally:
        if outcome is not None:
            outcome.ctx.store.db.dispose()
    if outcome is not None and outcome.partial:
        result["partial"] = True
    if keep is not None and not result["partial"]:
        dest = keep / spec.label.replace(":", "-")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(workdir, dest)
    return result


def _longest_first(specs: Sequence[PolicySpec]) -> list[PolicySpec]:
    """The order that ends soonest on few CPUs: the most trainings first (short ``every:`` periods),
    then ``auto``, then ``never``."""
    rank = {"every": 0, "auto": 1, "never": 2}
    return sorted(specs, key=lambda s: (rank[s.kind], s.period.total_seconds() if s.period else 0.0))


def run_backtest(data: ReplayData | str | Path, settings: BacktestSettings, *, out: str | Path | None = None,
                 progress: bool | ProgressBar = False, time: str = "time", label: str = "label",
                 ret: str | None = None, features: Sequence[str] | None = None) -> dict[str, Any]:
    """Replay every policy of ``settings`` over ``data``; write ``out`` (report.json, report.html) if given.

    ``data`` is a :class:`ReplayData` or a CSV/Parquet path read with the column names given.
    Returns the report (see :mod:`retrain.backtest` for its schema). A Ctrl-C (or a SIGTERM
    inside :func:`stop_on_sigterm`) stops the replays in progress: the report then holds what was
    replayed and says ``partial``. Once the replays are over, a signal waits until the report is
    written and the temporary folder removed (:func:`hold_signals`).
    ``settings.jobs`` policies replay at once, each in its own forked process
    (:mod:`retrain.backtest.parallel`), or one after the other in this process when it runs
    other threads; the results are the same either way.
    """
    if not isinstance(data, ReplayData):
        data = load_data(data, time=time, label=label, ret=ret, features=features)
    config, model, opts, specs, widened = _resolve(data, settings)
    jobs = default_jobs(len(specs)) if settings.jobs is None else max(1, min(int(settings.jobs), len(specs)))
    if threading.active_count() > 1:
        jobs = 1  # forking a process with other threads running could copy a lock some thread holds
    bar = progress if isinstance(progress, ProgressBar) else (ProgressBar(len(specs)) if progress else None)
    out_dir = Path(out) if out is not None else None
    keep = out_dir / "state" if settings.keep_state and out_dir is not None else None
    t0 = monotonic()
    results: dict[str, dict[str, Any]] = {}
    partial = False
    workroot: Path | None = None
    try:
        try:
            workroot = Path(tempfile.mkdtemp(prefix="retrain-backtest-"))
            template = template_database(workroot)
            if jobs == 1:
                for spec in specs:
                    if bar is not None:
                        bar.next_policy()
                    results[spec.label] = _one_policy(data, config, model, spec, opts, workroot, template, keep,
                                                      bar)
                    if results[spec.label]["partial"]:
                        partial = True
                        break
            else:
                order = _longest_first(specs)
                results, partial = run_parallel(
                    [s.label for s in order], functools.partial(_one_policy, data, config, model),
                    {s.label: (s, opts, workroot, template, keep) for s in order}, jobs, progress=bar,
                    stop_exc=Terminated)
                partial = partial or any(r["partial"] for r in results.values())
        except KeyboardInterrupt:
            # Between two replays (or before the first): the report covers the ones that finished.
            partial = True
        # From here on a Ctrl-C or SIGTERM waits: the report and the cleanup are not cut short.
        with hold_signals():
            report = _assemble(data, settings, config, model, opts, specs, widened, results, partial, bar, t0)
            if out_dir is not None:
                write_report(report, out_dir)
            if workroot is not None:
                shutil.rmtree(workroot, ignore_errors=True)
    finally:
        # An error, or a signal before the hold: the temporary folder goes either way.
        if workroot is not None:
            with hold_signals():
                shutil.rmtree(workroot, ignore_errors=True)
    return report


def _assemble(data: ReplayData, settings: BacktestSettings, config: RetrainConfig, model: str, opts: ReplayOptions,
              specs: list[PolicySpec], widened: list[str], results: dict[str, dict[str, Any]], partial: bool,
              bar: ProgressBar | None, t0: float) -> dict[str, Any]:
    """The report from the policies' parts (see :mod:`retrain.backtest` for its schema)."""
    policies = {s.label: results[s.label]["report"] for s in specs
                if s.label in results and results[s.label]["report"] is not None}
    cfg_json = {s.label: results[s.label]["config"] for s in specs
                if s.label in results and results[s.label]["config"] is not None}
    if bar is not None:
        bar.close()
    primary = specs[0].label
    warm_end = data.start + opts.warmup
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "partial": partial,
        "policies_requested": [s.label for s in specs],
        "data": data.describe(),
        "settings": {"model": model, "config": str(config.source), "label_delay": format_duration(opts.label_delay),
                     "warmup": format_duration(opts.warmup), "warmup_end": warm_end.isoformat(),
                     "period": format_duration(opts.period), "sweep_every": format_duration(opts.sweep_every),
                     "approve_after": None if opts.approve_after is None else format_duration(opts.approve_after),
                     "widened": widened, **settings.extra},
        "model_config": cfg_json.get(primary) or next(iter(cfg_json.values()), {}),
        "data_drift": data_drift(data, warm_end, timeline_width(data, max_bins=60, min_rows=500)),
        **(policies.get(primary) or {"policy": primary, "partial": True, "rows": len(data)}),
        "policies": policies,
        "elapsed_s": round(monotonic() - t0, 3),
    }
    # The top level's partial says whether the whole run finished, not only the primary policy.
    report["partial"] = partial or any(p.get("partial") for p in policies.values())
    return report


def _effective(config: RetrainConfig, model: str) -> dict[str, Any]:
    from retrain.backtest.source import PARAM

    cfg = config.model(model).model_dump(mode="json")
    cfg.get("params", {}).pop(PARAM, None)
    pol = config.policy_for(model)
    policy = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in
              ((f, getattr(pol, f)) for f in pol.__dataclass_fields__ if not f.startswith("_"))}
    return {"model": cfg, "policy": policy, "costs": config.costs.model_dump(mode="json")}


def write_report(report: dict[str, Any], out: str | Path) -> Path:
    """Write ``report.json``, ``report.html`` and the PNG plots into ``out``; returns the HTML path."""
    from retrain.backtest.html import write_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return write_html(report, out)


def summary_text(report: dict[str, Any]) -> str:
    """A few lines comparing the policies, for a terminal."""
    from retrain.report import table

    rows = []
    for label, p in report["policies"].items():
        acc = p.get("accuracy")
        sh = p.get("sharpe")
        rows.append([label + (" (partial)" if p.get("partial") else ""),
                     "-" if acc is None else f"{acc:.4f}", "-" if sh is None else f"{sh:.4f}",
                     p.get("retrainings", "-"), p.get("promotions", "-"), p.get("rollbacks", "-"),
                     "-" if p.get("cost_usd") is None else f"${p['cost_usd']:.4f}",
                     ", ".join(f"{k} {v}" for k, v in (p.get("triggers") or {}).items() if v) or "-"])
    d = report["data"]
    head = (f"backtest of {d['rows']} rows ({d['start'][:16]} .. {d['end'][:16]}), warm-up "
            f"{report['settings']['warmup']}, label delay {report['settings']['label_delay']}"
            + ("  [PARTIAL: interrupted]" if report.get("partial") else ""))
    body = table(rows, ["policy", "accuracy", "sharpe", "retrainings", "promotions", "rollbacks", "cost",
                        "requests by trigger"])
    return f"{head}\n{body}"


def example_data(days: float = 5.0) -> tuple[ReplayData, RetrainConfig]:
    """The market of the example model file (``retrain/examples/direction.toml``: regime shifts at
    +36 h and +84 h, a feature drift at +60 h, a flash crash at +100 h) and that model file."""
    from retrain.backtest.data import from_arrays
    from retrain.examples.direction import market_from_params

    path = Path(__file__).resolve().parent.parent / "examples" / "direction.toml"
    config = load_config(path)
    params = dict(next(iter(config.models.values())).params)
    market = market_from_params(params)
    rows = market.rows(market.start, market.start + timedelta(days=days))
    data = from_arrays(rows.ts, rows.X, rows.y, rows.ret, features=market.feature_names,
                       source=f"example market ({path.name}, {days:g} days)",
                       columns={"time": "time", "label": "label", "return": "ret"})
    return data, config


def run_comparison(data: ReplayData | str | Path | None = None, *, policies: Sequence[str] = ("auto", "never",
                   "every:1d"), out: str | Path | None = None, progress: bool = False,
                   **settings: Any) -> tuple[dict[str, Any], str]:
    """Compare policies on ``data``; returns ``(report, summary text)``.

    Without ``data``: the example model file on its own synthetic market (:func:`example_data`,
    ``days`` 5 by default, label delay 1 minute, warm-up 8 h, a sweep every 10 simulated minutes),
    i.e. the demo's market. For the
    demo's closing comparison::

        report, text = run_comparison(out="retrain-demo/backtest")
        print(text)

    Keyword arguments are :class:`BacktestSettings` fields (``label_delay``, ``warmup``, ...),
    the column names of a CSV (``time``, ``label``, ``ret``, ``features``), or ``days``.
    """
    columns = {k: settings.pop(k) for k in ("time", "label", "ret", "features") if k in settings}
    days = settings.pop("days", 5.0)
    if data is None:
        data, config = example_data(days)
        settings.setdefault("config", config)
        settings.setdefault("label_delay", "1m")
        settings.setdefault("warmup", "8h")
        # 24 sweeps per 4-hour window: detection a few minutes later than beat's 60 s, in half the time.
        settings.setdefault("sweep_every", "10m")
    s = BacktestSettings(policies=tuple(policies), **settings)
    report = run_backtest(data, s, out=out, progress=progress, **columns)
    return report, summary_text(report)
