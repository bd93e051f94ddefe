"""Schedules (ADAPT-010): DST-safe crontab slots, a slot that fires once, the off-peak
window, and one beat at a time with two real `celery beat` processes."""

from __future__ import annotations

import base64
import json
import signal
import socket
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import redis
from celery import Celery
from celery.schedules import crontab

from retrain.config import parse_config
from retrain.core.clock import SimClock
from retrain.core.payloads import ManualRequestPayload
from retrain.steps.decide import decide_request
from retrain.steps.requests import request_retraining, slot_key, sync_models
from tests.conftest import make_context
from tests.procs import retrain_env, start_beat, wait_for
from workers.beat import scheduled_instant

pytestmark = pytest.mark.integration
UTC = timezone.utc


def _walk(tz: str, fields: dict, start: datetime, days: int, restart_at: datetime | None = None):
    """Beat's loop on a simulated clock (a check every 30 s): the instants an entry fires and their slot keys.

    ``restart_at``: a beat restarted then with a schedule file that says the entry last ran a day ago.
    """
    app = Celery(set_as_current=False)
    app.conf.timezone, app.conf.enable_utc = tz, True
    now = {"t": start}
    entry = crontab(**fields, nowfun=lambda: now["t"], app=app)
    last, fired = start, []
    t = start
    while t < start + timedelta(days=days):
        now["t"] = t
        if restart_at is not None and t == restart_at:
            last = t - timedelta(days=1)
        due, _ = entry.is_due(last)
        if due:
            fired.append((t, slot_key(fields.get("slot", "daily"), scheduled_instant(entry, last), tz)))
            last = t
        t += timedelta(seconds=30)
    return fired


@pytest.mark.parametrize("tz, start", [
    ("America/New_York", datetime(2026, 3, 6, 12, tzinfo=UTC)),   # spring forward on Sun 8 Mar, 02:00 -> 03:00
    ("America/New_York", datetime(2026, 10, 30, 12, tzinfo=UTC)),  # fall back on Sun 1 Nov, 02:00 -> 01:00
    ("Europe/Berlin", datetime(2026, 3, 27, 12, tzinfo=UTC)),      # spring forward on Sun 29 Mar, 02:00 -> 03:00
    ("Europe/Berlin", datetime(2026, 10, 23, 12, tzinfo=UTC)),     # fall back on Sun 25 Oct, 03:00 -> 02:00
])
@pytest.mark.parametrize("hhmm", [(2, 30), (1, 30)])
def test_a_daily_slot_fires_once_on_every_local_date_across_dst(tz, start, hhmm):
    # Given a daily entry at a wall time that a DST change skips or repeats
    fired = _walk(tz, {"hour": str(hhmm[0]), "minute": str(hhmm[1])}, start, days=4)
    zone = ZoneInfo(tz)
    local = [t.astimezone(zone) for t, _ in fired]
    # Then it fires once per local date, at its wall time (or at the first valid time after a skipped one)
    dates = [d.date() for d in local]
    assert len(dates) == len(set(dates)) == 4
    assert all((d.hour, d.minute) == hhmm or (d.hour, d.minute) == (hhmm[0] + 1, hhmm[1]) for d in local)
    # And each firing's slot key is its own local date
    assert [k for _, k in fired] == [f"daily@{d:%Y-%m-%d}" for d in dates]


def test_a_restarted_beat_catches_a_missed_slot_up_under_its_own_key():
    # Given a daily 02:00 entry in New York and a beat restarted at 01:00 with a day-old schedule file
    tz = "America/New_York"
    start = datetime(2026, 3, 7, 5, tzinfo=UTC)  # 00:00 EST
    fired = _walk(tz, {"hour": "2", "minute": "0"}, start, days=1, restart_at=start + timedelta(hours=1))
    keys = [k for _, k in fired]
    # Then the slot it missed fires once with yesterday's key, and today's fires at 02:00 with today's
    assert keys == ["daily@2026-03-06", "daily@2026-03-07"]
    assert fired[1][0].astimezone(ZoneInfo(tz)).hour == 2


def _config(tz: str = "UTC"):
    return parse_config({
        "settings": {"timezone": tz, "offpeak_start": "01:00", "offpeak_end": "05:00"},
        "policy": {"max_cpu_load_pct": 10_000, "min_free_memory_mb": 0, "min_free_disk_mb": 0,
                   "approval_days": 0, "value_per_accuracy_point_usd": 0.01},
        "models": {"direction": {"entry_point": "retrain.examples.direction:train",
                                 "features": [f"f{i}" for i in range(8)], "schedule": {"daily": "02:00"}}},
    })


def _scheduled(slot: str) -> ManualRequestPayload:
    return ManualRequestPayload(model="direction", reason="scheduled daily retraining", trigger="schedule",
                                slot=slot, requested_by="beat")


def test_the_same_slot_sent_twice_fires_once(any_db_url, tmp_path):
    # Given a Europe/Berlin deployment, at 01:10 UTC (02:10 local) on 5 Jan
    clock = SimClock(datetime(2026, 1, 5, 1, 10, tzinfo=UTC))
    ctx = make_context(any_db_url, tmp_path, config=_config("Europe/Berlin"), clock=clock)
    sync_models(ctx)
    # When two beats send the daily slot, one with the key, one with the bare name a minute later
    first = request_retraining(ctx, _scheduled(slot_key("daily", clock.now(), "Europe/Berlin")))
    clock.advance(timedelta(minutes=1))
    second = request_retraining(ctx, _scheduled("daily"))
    # Then the slot fires once
    assert first.created and first.request_id
    assert not second.created and second.request_id is None and "already fired" in second.detail
    with ctx.store.tx() as tx:
        assert len(tx.requests.newest("direction")) == 1
    # And the next local day is a new slot (which joins the request still open, not a second one)
    clock.advance(timedelta(days=1))
    assert request_retraining(ctx, _scheduled("daily")).detail == "joined the open request"
    with ctx.store.tx() as tx:
        slots = tx.monitoring.schedule_slots()
    assert slots == ["daily@2026-01-05", "daily@2026-01-06"]


def test_a_scheduled_request_outside_the_off_peak_window_waits_for_it(sqlite_url, tmp_path):
    # Given a scheduled request that arrives at 14:00 UTC, outside 01:00-05:00
    clock = SimClock(datetime(2026, 1, 5, 14, tzinfo=UTC))
    ctx = make_context(sqlite_url, tmp_path, config=_config(), clock=clock)
    sync_models(ctx)
    rid = request_retraining(ctx, _scheduled("daily")).request_id
    # When it is decided
    result = decide_request(ctx, rid)
    # Then it is deferred to the next opening of the window, 01:00 the next day
    assert result.verdict == "defer", result.summary
    with ctx.store.tx() as tx:
        d = tx.decisions.get(result.decision_id)
    assert d.defer_until == datetime(2026, 1, 6, 1, tzinfo=UTC)
    assert any(r["rule"] == "offpeak" and not r["passed"] for r in d.rules)


# ----------------------------------------------------------------------------- two real beats


def _sweeps_by_origin(url: str) -> dict[str, int]:
    r = redis.Redis.from_url(url)
    out: dict[str, int] = {}
    for key in r.keys("monitoring*"):
        if r.type(key) != b"list":
            continue
        for raw in r.lrange(key, 0, -1):
            msg = json.loads(raw)
            if msg["headers"]["task"] == "retrain.sweep":
                assert json.loads(base64.b64decode(msg["body"]))[0] == [{"v": 1}]
                origin = msg["headers"]["origin"]
                out[origin] = out.get(origin, 0) + 1
    return out


@pytest.mark.timeout(90)
def test_two_beats_one_sends_and_the_other_takes_over_when_it_dies(pg_url, redis_url, tmp_path):
    toml = tmp_path / "retrain.toml"
    toml.write_text('[models.direction]\nentry_point = "retrain.examples.direction:train"\n'
                    'features = ["f0", "f1"]\n[models.direction.schedule]\ndaily = "02:00"\n')
    env = retrain_env(RETRAIN_DATABASE_URL=pg_url, RETRAIN_BROKER_URL=redis_url, RETRAIN_CONFIG=str(toml),
                      RETRAIN_HOME=str(tmp_path), RETRAIN_SWEEP_INTERVAL_S="0.5", RETRAIN_RELAY_INTERVAL_S="600",
                      RETRAIN_RECONCILE_INTERVAL_S="600", RETRAIN_RETENTION_INTERVAL_S="600",
                      RETRAIN_BEAT_LEASE_S="3")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    host = socket.gethostname()
    # Given two beats started side by side
    beats = [start_beat(env, tmp_path / "a"), start_beat(env, tmp_path / "b")]
    try:
        origin = {f"gen{b.p.pid}@{host}": b for b in beats}
        # When both run: one takes the lease and sends, the other finds it taken and waits
        wait_for("one beat's sweeps", lambda: max(_sweeps_by_origin(redis_url).values(), default=0) >= 2, 40, beats)
        wait_for("the other beat to find the lease taken",
                 lambda: any("does not hold the beat lease" in b.log() for b in beats), 30, beats)
        time.sleep(1.5)  # several of the waiting beat's attempts
        sent = _sweeps_by_origin(redis_url)
        [holder_origin] = sent  # Then only one of them has sent anything
        holder = origin[holder_origin]
        [standby] = [b for b in beats if b is not holder]
        standby_origin = f"gen{standby.p.pid}@{host}"
        assert "does not hold the beat lease" in standby.log() and "holds the beat lease" in holder.log()
        # When the holder dies without a word (no release of the lease)
        holder.stop(signal.SIGKILL)
        sent_by_holder = _sweeps_by_origin(redis_url)[holder_origin]
        killed = time.monotonic()
        # Then the other takes over within about a lease, and the dead one sends nothing more
        wait_for("the standby beat to take over",
                 lambda: _sweeps_by_origin(redis_url).get(standby_origin, 0) >= 2, 20, [standby])
        print(f"the standby beat took over {time.monotonic() - killed:.1f} s after the holder was killed (lease 3 s)")
        assert _sweeps_by_origin(redis_url)[holder_origin] == sent_by_holder
        assert "holds the beat lease" in standby.log()
    finally:
        for b in beats:
            b.stop()


def test_a_training_node_short_of_memory_defers_the_run(sqlite_url, tmp_path):
    from retrain.core.policy import ResourceReading

    # Given a scheduled request inside the off-peak window, and a node with 300 MB free
    clock = SimClock(datetime(2026, 1, 5, 2, tzinfo=UTC))
    cfg = _config()
    cfg = cfg.model_copy(update={"policy": {**cfg.policy, "min_free_memory_mb": 1024}})
    ctx = make_context(sqlite_url, tmp_path, config=cfg, clock=clock)
    sync_models(ctx)
    rid = request_retraining(ctx, _scheduled("daily")).request_id
    result = decide_request(ctx, rid, ResourceReading(free_memory_mb=300, cpu_load_pct=20, free_disk_mb=50_000))
    # Then the run is deferred by the resources rule, to be tried again a few minutes later
    assert result.verdict == "defer", result.summary
    with ctx.store.tx() as tx:
        d = tx.decisions.get(result.decision_id)
    rule = next(r for r in d.rules if r["rule"] == "resources")
    assert not rule["passed"] and "free memory 300 MB" in rule["detail"]
    assert d.defer_until == clock.now() + timedelta(minutes=5)
