"""The decision under concurrency: real processes, real Postgres, no overspend.

100 requests for several models are decided at once by four worker processes
(``multiprocessing`` with ``spawn``: fresh interpreters, each with its own engine
and connections, calling :func:`retrain.steps.decide.decide_request` as the
``retrain.decide`` task does). Every process is handed *every* request id in its
own shuffled order, as if each message were delivered four times, so the same
request is raced by all of them. Afterwards the daily limits, the cooldowns and
the budgets hold exactly, every request was decided exactly once, and the ledger
sums to the reservations. The first test runs on SQLite too: the embedded default
serialises processes on one machine with the same lock.

Without the decision lock both tests fail (six approvals where the money pays for
four; eight runs where it pays for seven): that is how they were checked.

The 100 requests are inserted directly (``open_key`` None): the one-open-request-
per-model-and-trigger rule would fold most of them before they reach the decision,
and the decision is what is under test here.
"""

from __future__ import annotations

import multiprocessing
import random
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.runs import end_run, make_run

pytestmark = pytest.mark.timeout(120)

NOW = datetime(2026, 1, 5, 18, 0, tzinfo=timezone.utc)  # a Monday evening, outside the off-peak window
PROCESSES = 4
TRIGGERS = ("performance", "drift", "manual")


def _model(**policy) -> dict:
    return {"entry_point": "retrain.examples.direction:train", "data_source": "retrain.examples.direction:history",
            "features": ["f0", "f1"], "first_run_cost_usd": 1.0, "policy": policy}


def _context(db_url: str, home: Path, config_data: dict):
    from retrain.artifacts import ArtifactStore
    from retrain.config import parse_config
    from retrain.context import Context
    from retrain.core.clock import SimClock
    from retrain.settings import Settings
    from retrain.storage.db import Database
    from retrain.storage.repo import Store

    s = Settings(home=home, database_url=db_url, broker_url="memory://", artifact_root=home / "artifacts")
    return Context(store=Store(Database(db_url)), config=parse_config(config_data, "concurrency test"),
                   clock=SimClock(NOW), artifacts=ArtifactStore(s.artifact_root), settings=s,
                   worker_id=f"decider-{uuid.uuid4().hex[:6]}")


def _complete(ctx, run_id: str) -> None:
    """What the training step does at its end: the reservation becomes the measured cost."""
    with ctx.store.tx() as tx:
        run = end_run(tx, run_id, "done", ctx.now())
        held = tx.ledger.held_reservation(run_id)
        tx.ledger.add(run_id, run.model, "release", -held, ctx.now(), {"reason": "replaced by actual cost"})
        tx.ledger.add(run_id, run.model, "actual", held, ctx.now(), {})


def _decider(db_url: str, home: str, config_data: dict, ids: list[str], barrier, results, complete: bool) -> None:
    """One worker process: decide every id it was handed, as a redelivered message would be."""
    from retrain.steps.decide import decide_request

    ctx = _context(db_url, Path(home), config_data)
    out: list[tuple[str, str | None]] = []
    try:
        with ctx.store.tx() as tx:  # connect before the start line, so that the race is the decisions'
            tx.models.names()
        barrier.wait(timeout=60)
        for rid in ids:
            res = decide_request(ctx, rid)
            out.append((rid, None if res.skipped else res.verdict))
            if complete and res.verdict == "approve":
                _complete(ctx, res.run_id)
        results.put(("ok", out))
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails with it
        results.put(("error", repr(exc)))
    finally:
        ctx.store.db.dispose()


def _seed_requests(ctx, per_model: dict[str, int], rng: random.Random) -> list[str]:
    from retrain.core.domain import RetrainRequest, TriggerKind

    ids = []
    with ctx.store.tx() as tx:
        for model, n in per_model.items():
            for _ in range(n):
                trig = TriggerKind(rng.choice(TRIGGERS))
                rid = str(uuid.uuid4())
                tx.requests.open(RetrainRequest(id=rid, model=model, trigger=trig, created_at=NOW,
                                                reason="concurrency test", requested_by="test"), exclusive=False)
                ids.append(rid)
    return ids


def _seed_run(ctx, model: str, at: datetime, cost: float = 1.0) -> None:
    """A finished run of the past, with the ledger rows a real one leaves."""
    with ctx.store.tx() as tx:
        rid = make_run(tx, model, at, state="done").id
        tx.ledger.add(rid, model, "reservation", cost, at)
        tx.ledger.add(rid, model, "release", -cost, at)
        tx.ledger.add(rid, model, "actual", cost, at)


def _race(db_url: str, tmp_path: Path, config_data: dict, ids: list[str], complete: bool) -> list[tuple]:
    mp = multiprocessing.get_context("spawn")
    barrier, results = mp.Barrier(PROCESSES), mp.Queue()
    procs = []
    for i in range(PROCESSES):
        order = list(ids)
        random.Random(i).shuffle(order)
        home = tmp_path / f"decider{i}"
        home.mkdir()
        procs.append(mp.Process(target=_decider, args=(db_url, str(home), config_data, order, barrier, results,
                                                       complete), name=f"decider-{i}"))
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=90) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    errors = [o[1] for o in outcomes if o[0] != "ok"]
    assert not errors, errors
    return [item for _, out in outcomes for item in out]


def _check_every_request_decided_once(ctx, ids: list[str], attempts: list[tuple]) -> Counter:
    decided = Counter(rid for rid, verdict in attempts if verdict is not None)
    assert len(attempts) == PROCESSES * len(ids)
    assert set(decided) == set(ids) and set(decided.values()) == {1}, "a request was decided twice or never"
    with ctx.store.tx() as tx:
        rows = tx.decisions.newest(limit=10_000)
    assert Counter(d.request_id for d in rows) == Counter({rid: 1 for rid in ids})
    return Counter(d.verdict for d in rows)


def _ledger(ctx) -> dict[str, float]:
    with ctx.store.tx() as tx:
        rows = tx.ledger.entries()
    out: Counter[str] = Counter()
    for r in rows:
        out[r.kind] += r.amount_usd
        out[f"day:{r.day}"] += r.amount_usd
        out[f"model:{r.model}"] += r.amount_usd
    return dict(out)


def test_a_hundred_requests_raced_by_four_processes_never_overspend_or_exceed_a_limit(any_db_url, tmp_path):
    # (On SQLite too: the embedded default is meant for one machine, but the decision lock,
    # a write that takes SQLite's database lock, serialises processes there as well.)
    # Given ten models and a day that has already used $4 of an $8.50 daily budget:
    #   m0 trained an hour ago (cooldown 6 h), m1 twice today (limit 2 a day),
    #   m2 spent $1 of its own $1.50 daily budget, m3 is paused, m4..m9 are free;
    #   every run is estimated at $1, so the money left pays for exactly 4 runs.
    config_data = {"policy": {"daily_budget_usd": 8.5, "approval_days": 0},
                   "models": {f"m{i}": _model(**({"model_daily_budget_usd": 1.5} if i == 2 else {}))
                              for i in range(10)}}
    ctx = _context(any_db_url, tmp_path, config_data)
    from retrain.steps.requests import sync_models

    sync_models(ctx)
    _seed_run(ctx, "m0", NOW - timedelta(hours=1))
    _seed_run(ctx, "m1", NOW - timedelta(hours=11))
    _seed_run(ctx, "m1", NOW - timedelta(hours=8))
    _seed_run(ctx, "m2", NOW - timedelta(hours=10))
    with ctx.store.tx() as tx:
        tx.models.set_paused("m3", True, "test", "frozen for the test", NOW)
    ids = _seed_requests(ctx, {f"m{i}": 10 for i in range(10)}, random.Random(7))

    # When four processes decide all 100 at once, each trying every one of them
    attempts = _race(any_db_url, tmp_path, config_data, ids, complete=False)

    # Then every request was decided exactly once
    verdicts = _check_every_request_decided_once(ctx, ids, attempts)
    with ctx.store.tx() as tx:
        runs = tx.runs.newest(limit=1000)
        decisions = tx.decisions.newest(limit=1000)
        outbox = [m for m in tx.outbox.pending(limit=1000) if m.task == "retrain.train"]
    new_runs = [r for r in runs if r.created_at == NOW]
    # and the budget bought exactly 4 runs, one per model, none for a model a rule holds back
    assert len(new_runs) == 4 and verdicts["approve"] == 4
    assert len({r.model for r in new_runs}) == 4
    assert {r.model for r in new_runs} <= {f"m{i}" for i in range(4, 10)}
    # the per-model limits, the cooldown and the pause held for every one of their ten requests
    by_model = {m: Counter(d.verdict for d in decisions if d.model == m) for m in ("m0", "m1", "m2", "m3")}
    assert by_model["m0"] == {"defer": 10} and by_model["m1"] == {"defer": 10} and by_model["m2"] == {"defer": 10}
    assert by_model["m3"] == {"reject": 10}
    fails = lambda m: {r["rule"] for d in decisions if d.model == m for r in d.rules if not r["passed"]}  # noqa: E731
    assert "cooldown" in fails("m0") and "daily_runs" in fails("m1") and "model_budget_daily" in fails("m2")
    # every other request either joined an approved model's run or waits for tomorrow's budget
    assert verdicts == {"approve": 4, "coalesced": 4 * 9, "defer": 30 + 20, "reject": 10}
    # and the ledger holds exactly the four reservations on top of the day's $4: $8 of $8.50
    ledger = _ledger(ctx)
    assert ledger["reservation"] == pytest.approx(4 * 1.0 + 4 * 1.0)
    assert ledger[f"day:{NOW:%Y-%m-%d}"] == pytest.approx(8.0)
    assert sum(d.estimated_cost_usd for d in decisions if d.verdict == "approve") == pytest.approx(4.0)
    with ctx.store.tx() as tx:
        assert sum(tx.ledger.held_reservation(r.id) for r in new_runs) == pytest.approx(4.0)
        # as the decision reads the day's spend
        st = tx.decision_state.snapshot("m4", now=NOW, history=timedelta(days=31), window=timedelta(hours=1),
                                        report_max_age=timedelta(minutes=10))
        assert st.spend_today <= 8.5
    assert sorted(m.payload["run_id"] for m in outbox) == sorted(r.id for r in new_runs)


def test_runs_that_finish_at_once_still_respect_daily_limits_cooldowns_and_the_budget(pg_url, tmp_path):
    # Given six models, each run estimated (and measured) at $1, a $7 daily budget:
    #   m0..m4 with no cooldown and 2 runs a day each, m5 with the 6 h cooldown;
    #   together they could start 11 runs, the money pays for 7
    models = {f"m{i}": _model(cooldown_hours=0.0) for i in range(5)}
    models["m5"] = _model()
    config_data = {"policy": {"daily_budget_usd": 7.0, "approval_days": 0}, "models": models}
    ctx = _context(pg_url, tmp_path, config_data)
    from retrain.steps.requests import sync_models

    sync_models(ctx)
    ids = _seed_requests(ctx, {m: 100 // 6 + (1 if i < 100 % 6 else 0) for i, m in enumerate(sorted(models))},
                         random.Random(11))
    assert len(ids) == 100

    # When four processes decide them at once and each approved run finishes at once (so the
    # next request of the model is decided against the limits, not joined to the run)
    attempts = _race(pg_url, tmp_path, config_data, ids, complete=True)

    # Then every request was decided once, and no limit was passed by a race
    _check_every_request_decided_once(ctx, ids, attempts)
    with ctx.store.tx() as tx:
        runs = tx.runs.newest(limit=1000)
    per_model = Counter(r.model for r in runs)
    assert all(per_model[m] <= 2 for m in models)  # the daily limit
    assert per_model["m5"] <= 1  # the cooldown: every start is at the same instant
    # the budget bought exactly 7 runs ($7 of $7) and not one more
    assert len(runs) == 7
    ledger = _ledger(ctx)
    assert ledger[f"day:{NOW:%Y-%m-%d}"] == pytest.approx(7.0)
    # and the ledger sums to the reservations: each became its actual cost, none is still held
    assert ledger["reservation"] == pytest.approx(7.0) and ledger["actual"] == pytest.approx(7.0)
    assert ledger["release"] == pytest.approx(-7.0)
    assert all(r.state == "done" for r in runs)
