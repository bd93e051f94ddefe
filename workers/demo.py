"""``retrain demo``: the whole loop with no service, on a simulated clock.

SQLite for state, Celery's in-memory broker with an in-process worker for dispatch
(every step still goes through ``send_task`` and a real Celery consumer), the
example market with its regime changes, and a trading app that serves the current
production version and reports through :class:`retrain.client.RetrainClient`.
Beat is replaced by the same crontab objects driven from the simulated clock.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

DEMO_START = datetime(2026, 1, 5, tzinfo=timezone.utc)


def _configure_env(home: Path) -> None:
    os.environ["RETRAIN_HOME"] = str(home)
    os.environ["RETRAIN_DATABASE_URL"] = f"sqlite:///{(home / 'retrain.db').as_posix()}"
    os.environ["RETRAIN_BROKER_URL"] = "memory://"
    os.environ.pop("RETRAIN_RESULT_BACKEND", None)
    os.environ.setdefault("RETRAIN_CONFIG", str(Path(__file__).resolve().parent.parent / "retrain" / "examples"
                                                / "direction.toml"))
    os.environ["RETRAIN_WORKER_ID"] = "demo-worker"


def _record_clock(home: Path, now: datetime) -> None:
    """The demo's simulated "now", for ``retrain costs`` and ``status`` on its home (and a plain
    ``retrain status`` next to it, which points here)."""
    import json

    from retrain.cli.commands.common import DEMO_CLOCK_FILE

    (home / DEMO_CLOCK_FILE).write_text(json.dumps({"now": now.isoformat(), "start": DEMO_START.isoformat(),
                                                    "note": "written by retrain demo: its simulated clock"}))


class _InFlight:
    """Counts published-but-unfinished tasks, so the simulation advances only when the loop is quiet."""

    def __init__(self) -> None:
        self.n = 0
        self.cond = threading.Condition()

    def up(self, **_):
        with self.cond:
            self.n += 1

    def down(self, **_):
        with self.cond:
            self.n -= 1
            self.cond.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.n <= 0, timeout=timeout)


def run_demo(days: float = 5.0, home: Path = Path("retrain-demo"), step_minutes: int = 10, seed: int = 7,
             quiet: bool = False, backtest: bool = False) -> int:
    home = home.resolve()
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    _configure_env(home)

    import numpy as np
    from celery.contrib.testing.worker import start_worker
    from celery.schedules import crontab
    from celery.signals import before_task_publish, task_postrun

    from retrain.client import RetrainClient
    from retrain.core.clock import SimClock, monotonic
    from retrain.examples.direction import market_from_params
    from retrain.report import print_timeline
    from retrain.serving import StoreRoutingReader, routes_to_canary
    from retrain.storage.schema import upgrade
    from retrain.tasks import EVALUATE_ROLLOUTS, REQUEST_RETRAINING, ROUTES, SWEEP
    from workers import runtime

    clock = SimClock(DEMO_START)
    _record_clock(home, clock.now())
    runtime.set_clock(clock)
    ctx = runtime.context()
    upgrade(ctx.store.db.engine)

    from retrain.steps.requests import sync_models
    from workers.app import app

    sync_models(ctx)
    # No Flower watches the demo's in-process worker: task events would be published (and paid
    # for) on every one of its thousands of tasks for no reader.
    app.conf.worker_send_task_events = False
    app.conf.task_send_sent_event = False
    inflight = _InFlight()
    before_task_publish.connect(inflight.up, weak=False)
    task_postrun.connect(inflight.down, weak=False)

    def send(task: str, payload: dict, queue: str, priority: int) -> None:
        import celeryconfig

        app.send_task(task, args=[payload], queue=queue, routing_key=queue,
                      priority=celeryconfig.broker_priority(priority))

    cfg = ctx.config.model("direction")
    market = market_from_params(dict(cfg.params))
    client = RetrainClient(sender=send, clock=clock, start=False, batch_size=5000)
    schedules = {slot: crontab(**fields, nowfun=clock.now) for slot, fields in cfg.schedule.crontab_fields().items()}
    last_fired = {slot: DEMO_START for slot in schedules}
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))

    # Two threads take turns (the trading app here, the in-process worker): a shorter switch
    # interval hands the GIL over sooner when one waits on the other (5 ms by default).
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    say(f"retrain demo: {days:g} simulated days of the 'direction' model on the synthetic market "
        f"(regime shifts at +36 h and +84 h); state in {home}")
    t0 = monotonic()
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="ERROR", shutdown_timeout=30,
                      queues=["monitoring", "decision", "training", "validation", "promotion"]):
        client.request_retraining("direction", "initial model: nothing is in production yet",
                                  requested_by="demo operator", approved_by="demo operator")
        inflight.wait_idle()
        end = DEMO_START + timedelta(days=days)
        step = timedelta(minutes=step_minutes)
        model_cache: dict[str, object] = {}
        reader = StoreRoutingReader(ctx.store)
        canaries: list[str] = []
        sabotaged = False
        fault_rng = np.random.default_rng(seed)
        seen_audit: tuple[int, datetime | None] = (0, None)
        acc_hits = acc_n = 0
        while clock.now() < end:
            now = clock.now()
            # The trading app serves as retrain.serving.ModelRouter does: production, and the
            # canary for the routing keys its share sends there (a stable hash of the key).
            route = reader("direction")
            rows = market.rows(now, now + step)
            clock.advance(step)
            if route.production is not None:
                keys = [f"acct-{i % 500}" for i in range(len(rows.y))]
                to_canary = np.array([route.canary is not None and routes_to_canary(k, route.share_pct) for k in keys])
                pred = _model(ctx, model_cache, route.production_sha256, route.production).predict(rows.X)
                if to_canary.any():
                    canary_model = _model(ctx, model_cache, route.canary_sha256, route.canary)
                    cpred = canary_model.predict(rows.X[to_canary])
                    assert route.canary is not None  # keys go to the canary only when there is one
                    if route.canary not in canaries:
                        canaries.append(route.canary)
                    if route.canary == canaries[0] and route.share_pct >= 25:
                        # A deliberate, simulated defect: from 25 % on, the trading app's serving
                        # path of the first canary is broken and half of its answers are wrong.
                        # Shadow cannot see it (it scores logged rows on the validation queue);
                        # the canary's own served outcomes do, and it is rolled back automatically.
                        if not sabotaged:
                            sabotaged = True
                            say(f"    {now:%a %H:%M}  SABOTAGE   the demo now breaks the serving path of canary "
                                f"{route.canary} on purpose: half its answers are wrong from 25 % on. Shadow "
                                "scored the model itself and could not see this; the canary's own outcomes will.")
                        broken = fault_rng.random(len(cpred)) < 0.5
                        cpred = np.where(broken, 1 - rows.y[to_canary], cpred)
                    pred[to_canary] = cpred
                acc_hits += int(np.sum(pred == rows.y))
                acc_n += len(rows.y)
                base = int(now.timestamp())
                for i in range(len(rows.y)):
                    served_by = route.canary if to_canary[i] else route.production
                    assert served_by is not None
                    client.report("direction", f"{base}-{i}", rows.X[i].tolist(), int(pred[i]), served_by,
                                  int(rows.y[i]), float(rows.ret[i]), ts=float(rows.ts[i]))
                client.flush()
            if int((clock.now() - DEMO_START) / step) % 3 == 1:
                send(EVALUATE_ROLLOUTS, {"v": 1}, ROUTES[EVALUATE_ROLLOUTS], 5)
            for slot, sched in schedules.items():
                due, _ = sched.is_due(last_fired[slot])
                if due:
                    last_fired[slot] = clock.now()
                    send(REQUEST_RETRAINING, {"v": 1, "model": "direction", "trigger": "schedule", "slot": slot,
                                              "reason": f"scheduled {slot} retraining", "requested_by": "beat"},
                         ROUTES[REQUEST_RETRAINING], 1)
            if int((clock.now() - DEMO_START) / step) % 3 == 0:
                send(SWEEP, {"v": 1}, ROUTES[SWEEP], 5)
            if not inflight.wait_idle(timeout=120):
                print("demo: the worker did not finish its tasks within 120 s", file=sys.stderr)
                return 1
            _operator_approves(ctx, send, clock.now(), timedelta(minutes=30))
            if not inflight.wait_idle(timeout=120):
                print("demo: the worker did not finish its tasks within 120 s", file=sys.stderr)
                return 1
            seen_audit = _echo_events(ctx, seen_audit, say)
            if clock.now().hour % 6 == 0 and clock.now().minute < step_minutes:
                acc = acc_hits / acc_n if acc_n else float("nan")
                prod = route.production
                say(f"  {clock.now():%a %d %b %H:%M}  production {prod or '-':>6}  live accuracy {acc:.3f} "
                    f"({acc_n} predictions)   [{monotonic() - t0:5.1f} s]")
                acc_hits = acc_n = 0
        client.close()
    sys.setswitchinterval(switch)
    runtime.set_clock(clock)
    say("")
    print_timeline(ctx, "direction", out=sys.stdout)
    _registry_summary(ctx, home, say)
    _record_clock(home, clock.now())
    say(f"\nDone in {monotonic() - t0:.1f} s.")
    _what_next(home, say)
    if backtest:
        from retrain.backtest import run_comparison

        say("\nBacktest on the same market: what would each policy have done? (about a minute)")
        _, text = run_comparison(out=home / "backtest", days=min(days, 3.0))
        say(text)
        say(f"Report: {home / 'backtest' / 'report.html'}")
    return 0


def _model(ctx, cache: dict, sha256: str | None, version: str | None):
    """A version's model, loaded once and only after its sha256 checks out (audited if not)."""
    from retrain.registry import load_verified

    # The reader gives a digest with every version it routes to.
    assert sha256 is not None and version is not None

    if sha256 not in cache:
        cache[sha256] = load_verified(ctx, sha256, model="direction", version=version, purpose="serving (demo)")
    return cache[sha256]


def _registry_summary(ctx, home: Path, say) -> None:
    from retrain.cli.commands.registry import render_gc, render_versions
    from retrain.registry import served_at, version_records
    from retrain.steps.retention import retention_policy, run_retention

    with ctx.store.tx() as tx:
        records = version_records(tx, "direction")
        served = [(DEMO_START + timedelta(hours=h), served_at(tx, "direction", DEMO_START + timedelta(hours=h)))
                  for h in (12, 36, 60, 84, 108)]
    say("\nRegistry\n" + render_versions("direction", records, retention_policy(ctx, "direction"), "accuracy"))
    for t, v in served:
        say(f"  served at {t:%a %d %H:%M}: {v or '-'}")
    say("\n" + render_gc(run_retention(ctx, dry_run=True)))



def _what_next(home: Path, say) -> None:
    """The closing hint: commands that work as printed (the path to ``retrain`` as installed)."""
    from retrain.cli.commands.common import retrain_command

    try:
        where = home.relative_to(Path.cwd())
    except ValueError:
        where = home
    cmd = f"RETRAIN_HOME={where} {retrain_command()}"
    at = (DEMO_START + timedelta(hours=60)).strftime("%Y-%m-%dT%H:%M")
    say("\nWhat to try next (copy as they are):")
    for line, why in (
        (f"{cmd} status", "models, versions, runs, spend (as of the demo's simulated clock)"),
        (f"{cmd} decisions direction --limit 5", "the last decisions, every rule with its value and limit"),
        (f"{cmd} rollout direction", "the latest rollout: stages and figures"),
        (f"{cmd} history direction --at {at}", "what served at +60 h"),
        (f"{cmd} audit direction --kind rollback --kind bypass", "the automatic rollback and the emergency's "
                                                                   "bypass"),
        (f"{cmd} costs", "spend per day against the caps"),
    ):
        say(f"  {line:<78}  # {why}")


def _operator_approves(ctx, send, now, after: timedelta) -> None:
    """The simulated operator: approves what waited `after` for approval (the first-week gate)."""
    from retrain.outbox import relay
    from retrain.steps.decide import resolve_pending

    with ctx.store.tx() as tx:
        waiting = [r.id for r in tx.requests.newest(statuses=("pending_approval",))
                   if r.decision_id and tx.decisions.get(r.decision_id).decided_at <= now - after]
    for rid in waiting:
        resolve_pending(ctx, rid, approve=True, actor="demo operator", reason="reviewed the evidence")
    if waiting:
        from retrain.queues import ROUTES

        relay(ctx.store, lambda m: send(m.task, m.payload, ROUTES[m.task], m.priority), now)


_SHOWN = {"request", "decision", "version", "validation", "shadow", "rollout", "promotion", "rollback", "approval",
          "bypass", "retention", "artifact"}


def _echo_events(ctx, after: tuple[int, datetime | None], say) -> tuple[int, datetime | None]:
    """Print the events after ``after`` (the id and time of the last one printed); returns the new mark.

    Reads only the events since that time (the audit log's ``at`` is the simulated clock),
    not the newest 50 of every step, each with its JSON decoded 720 times over.
    """
    after_id, since = after
    with ctx.store.tx() as tx:
        events = [e for e in tx.audit.log(model="direction", since=since, limit=500) if e.id > after_id]
    for e in sorted(events, key=lambda e: e.id):
        if e.kind in _SHOWN:
            say(f"    {e.at:%a %H:%M}  {e.kind:<10} {_message(e)}")
    if not events:
        return after
    last = max(events, key=lambda e: e.id)
    return last.id, max(e.at for e in events)


def _message(e) -> str:
    """An audit event as the demo tells it: a coalesced decision by its reason only, an emergency's
    bypass and priority on their own line."""
    from retrain.core.domain import TRIGGER_PRIORITY, TriggerKind

    data = e.data or {}
    if e.kind == "decision" and data.get("verdict") == "coalesced":
        run = str((data.get("detail") or {}).get("coalesced_with") or "")[:8]
        return (e.message.split(":", 1)[0] + f": coalesced: joins the run already in progress ({run}); "
                "nothing new is started")
    if e.kind == "bypass" and (data.get("why") or "").startswith("emergency"):
        prio = TRIGGER_PRIORITY[TriggerKind.EMERGENCY]
        order = " > ".join(f"{k.value} {v}" for k, v in sorted(TRIGGER_PRIORITY.items(), key=lambda kv: -kv[1]))
        return (f"EMERGENCY: approved past {', '.join(data.get('would_have_failed') or [])} (bypassed: "
                f"{', '.join(data.get('bypassed') or [])}); its training goes first: priority {prio} ({order})")
    return e.message
