"""The beat scheduler: one beat emits at a time, and a scheduled slot is named by its own instant.

``celery beat --scheduler workers.beat:LockedScheduler`` (set in ``celeryconfig``)
is Celery's file-backed scheduler with two additions:

* **A lease.** Before it sends anything, the scheduler takes the ``beat`` lease in
  the database (``controls.hold_lease``: one conditional UPDATE of a ``controls`` row, so
  it works on Postgres and SQLite alike, whatever the broker) and renews it at least
  every third of ``RETRAIN_BEAT_LEASE_S`` (default 30 s). A second beat finds the
  lease held and waits, trying again every third of the lease; when the first one
  stops renewing (killed, wedged, or its database connection gone) the lease runs
  out and the second one takes over within one lease. A beat that cannot reach the
  database sends nothing. The holders' clocks must agree to well within the lease.
* **Slots named by their instant.** A crontab entry of a model's schedule carries
  ``slot: "daily"`` in its payload; the scheduler replaces it with the key of the
  instant the entry was due at (:func:`retrain.steps.requests.slot_key`, in the
  model file's time zone), e.g. ``daily@2026-01-05``. The request step claims that
  key in ``schedule_slots``, so a slot fires once even if two beats send it (a
  take-over, or a beat restarted with an old schedule file), and a slot missed while
  no beat ran is caught up once, under its own key, not under today's.

Time zones and DST: Celery's crontab runs in the app's ``timezone``, which
``celeryconfig`` takes from the model file; a daily 02:30 fires once on every local
date, at 03:30 on a spring-forward day and at the first 02:30 on a fall-back day
(``tests/integration/test_schedule.py`` walks a simulated clock through both).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

from celery.beat import PersistentScheduler
from celery.schedules import crontab

from retrain.core.clock import monotonic
from retrain.steps.requests import slot_key
from workers import runtime

__all__ = ["LockedScheduler", "LEASE", "scheduled_instant"]

log = logging.getLogger("retrain.beat")

LEASE = "beat"


def scheduled_instant(schedule: crontab, last_run_at):
    """The instant a crontab entry became due at: its first occurrence after ``last_run_at``."""
    return schedule.now() + schedule.remaining_estimate(last_run_at)


class LockedScheduler(PersistentScheduler):
    """Celery's persistent scheduler, sending only while it holds the beat lease."""

    def __init__(self, *args, **kwargs) -> None:
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_s = float(runtime.context().settings.beat_lease_s)
        self._holding: bool | None = None  # unknown until the first attempt, which is always logged
        self._renew_at = 0.0
        super().__init__(*args, **kwargs)

    # ----------------------------------------------------------------- the lease
    def holds_lease(self) -> bool:
        """Take or renew the lease when due; False while another beat holds it or the database is away."""
        if self._holding and monotonic() < self._renew_at:
            return True
        ctx = runtime.context()
        try:
            with ctx.store.tx() as tx:
                held = tx.controls.hold_lease(LEASE, self.holder, ctx.now(), self.lease_s)
        except Exception as exc:  # noqa: BLE001 - a beat that cannot renew must stop sending
            log.warning("beat %s cannot reach the database to renew its lease (%s); sending nothing", self.holder,
                        exc)
            held = False
        if held != self._holding:
            if held:
                log.warning("beat %s holds the beat lease and sends the schedule", self.holder)
            else:
                log.warning("beat %s does not hold the beat lease; another beat sends the schedule", self.holder)
        self._holding = held
        self._renew_at = monotonic() + self.lease_s / 3 if held else 0.0
        return held

    def tick(self, *args, **kwargs) -> float:
        if not self.holds_lease():
            return min(self.lease_s / 3, self.max_interval)
        return min(super().tick(*args, **kwargs), self.lease_s / 3)

    def close(self) -> None:
        try:
            if self._holding:
                ctx = runtime.context()
                with ctx.store.tx() as tx:
                    tx.controls.release_lease(LEASE, self.holder)
                self._holding = False
        except Exception:  # noqa: BLE001 - the lease then simply runs out
            log.exception("beat %s could not release its lease", self.holder)
        finally:
            super().close()

    # ----------------------------------------------------------------- slots
    def apply_entry(self, entry, producer=None):
        payload = entry.args[0] if entry.args and isinstance(entry.args[0], dict) else None
        if payload and isinstance(payload.get("slot"), str) and "@" not in payload["slot"] \
                and isinstance(entry.schedule, crontab):
            tz = runtime.context().config.settings.timezone
            key = slot_key(payload["slot"], scheduled_instant(entry.schedule, entry.last_run_at), tz)
            entry = self.Entry(**{**dict(entry), "args": [{**payload, "slot": key}]})
        return super().apply_entry(entry, producer=producer)
