"""The ledger rows of a run's life, written by the real steps: reserve, then actual or release.

A decision reserves its estimate; the training step (``retrain.steps.train``)
replaces it with the measured cost when the run trains, or releases it when the
run fails. Both land on the day and month of the reservation, even when the run
finishes after midnight, so that a day's spend is what that day's budget admitted.
"""

from __future__ import annotations

import tomllib
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from retrain.config import parse_config
from retrain.core.clock import SimClock
from retrain.core.payloads import ManualRequestPayload
from retrain.steps.decide import decide_request
from retrain.steps.requests import request_retraining, sync_models
from retrain.steps.train import train_run
from tests.conftest import EXAMPLE_CONFIG, make_context

pytestmark = pytest.mark.timeout(90)

LATE = datetime(2026, 1, 5, 23, 50, tzinfo=timezone.utc)


def too_little_history(now, lookback, params):
    """A data source with 10 rows: the training step refuses to fit on it."""
    return np.zeros((10, 8)), np.zeros(10, dtype=int), np.arange(10, dtype=float) + now.timestamp() - 100


def _ctx(db_url, tmp_path, data_source: str | None = None):
    raw = tomllib.loads(EXAMPLE_CONFIG.read_text())
    raw["policy"]["approval_days"] = 0
    raw["models"]["direction"]["first_run_cost_usd"] = 0.5
    if data_source:
        raw["models"]["direction"]["data_source"] = data_source
    ctx = make_context(db_url, tmp_path, config=parse_config(raw, "direction.toml (test)"), clock=SimClock(LATE))
    sync_models(ctx)
    return ctx


def _approve(ctx) -> str:
    res = request_retraining(ctx, ManualRequestPayload(model="direction", reason="test", requested_by="test"))
    decided = decide_request(ctx, res.request_id)
    assert decided.verdict == "approve"
    return decided.run_id


def _rows(ctx, run_id: str) -> list[tuple[str, float, str, str]]:
    with ctx.store.tx() as tx:
        rows = tx.ledger.entries(run_id=run_id)
        return [(r.kind, r.amount_usd, r.day, r.at.strftime("%Y-%m-%d")) for r in rows]


def _spend(tx, model: str, day: datetime) -> tuple[float, float, float, float]:
    """(spend today, this month, the model's today, the model's this month) as the decision reads them."""
    st = tx.decision_state.snapshot(model, now=day, history=timedelta(days=31), window=timedelta(hours=1),
                                    report_max_age=timedelta(minutes=10))
    return st.spend_today, st.spend_month, st.model_spend_today, st.model_spend_month


def test_a_run_that_trains_after_midnight_turns_its_reservation_into_its_cost_on_the_same_day(any_db_url, tmp_path):
    # Given a run approved at 23:50 with its $0.50 estimate reserved
    ctx = _ctx(any_db_url, tmp_path)
    run_id = _approve(ctx)
    assert _rows(ctx, run_id) == [("reservation", 0.5, "2026-01-05", "2026-01-05")]
    # When it trains at 00:20 the next day
    ctx.clock.advance(timedelta(minutes=30))
    assert train_run(ctx, run_id).status == "registered"
    # Then the reservation is released and the measured cost booked, both to the reservation's day
    rows = _rows(ctx, run_id)
    with ctx.store.tx() as tx:
        usage = tx.runs.get(run_id).usage
        held = tx.ledger.held_reservation(run_id)
        today = _spend(tx, "direction", datetime(2026, 1, 5, 12, tzinfo=timezone.utc))
        tomorrow = _spend(tx, "direction", datetime(2026, 1, 6, 12, tzinfo=timezone.utc))
    assert [(k, d, at) for k, _, d, at in rows] == [("reservation", "2026-01-05", "2026-01-05"),
                                                    ("release", "2026-01-05", "2026-01-06"),
                                                    ("actual", "2026-01-05", "2026-01-06")]
    actual = rows[2][1]
    assert rows[1][1] == -0.5 and actual == pytest.approx(usage["total_usd"]) and actual > 0
    assert held == 0.0
    # and the day's spend is the measured cost; nothing lands on the next day
    assert today[0] == pytest.approx(actual) and today[2] == pytest.approx(actual)
    assert tomorrow[0] == 0.0
    # and the next decision estimates from that measured cost
    with ctx.store.tx() as tx:
        assert tx.ledger.actual_costs("direction") == [pytest.approx(actual)]


def test_a_run_that_fails_gives_its_reservation_back(sqlite_url, tmp_path):
    # Given a run approved with $0.50 reserved, whose data source returns too little to train on
    ctx = _ctx(sqlite_url, tmp_path, data_source=f"{__name__}:too_little_history")
    run_id = _approve(ctx)
    # When it trains and fails
    ctx.clock.advance(timedelta(minutes=30))
    assert train_run(ctx, run_id).status == "failed"
    # Then the reservation is released on its own day and the run costs nothing
    assert [(k, a, d) for k, a, d, _ in _rows(ctx, run_id)] == [("reservation", 0.5, "2026-01-05"),
                                                                 ("release", -0.5, "2026-01-05")]
    with ctx.store.tx() as tx:
        assert tx.ledger.held_reservation(run_id) == 0.0
        assert _spend(tx, "direction", datetime(2026, 1, 5, 12, tzinfo=timezone.utc)) == (0.0, 0.0, 0.0, 0.0)
        assert tx.runs.get(run_id).state == "failed"
