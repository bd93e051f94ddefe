"""Time, injected.

Nothing else in ``retrain/`` reads the wall clock: production code receives a
:class:`Clock`, tests, the demo and the backtester hand it a :class:`SimClock`.
All times are timezone-aware UTC ``datetime`` objects.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Clock", "SystemClock", "SimClock", "utc", "time_zone", "monotonic", "timestamp_of"]


def utc(dt: datetime) -> datetime:
    """Return ``dt`` as an aware UTC datetime (naive values are taken as UTC)."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``: the one check of a zone name, for settings, the model
    file and the policy alike; raises ValueError naming it when it is unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {name!r}: expected an IANA name such as Europe/London") from None


#: Seconds from an arbitrary origin, for measuring durations only (the C function itself:
#: the client reads it on every report call).
monotonic = time.perf_counter


class Clock(Protocol):
    def now(self) -> datetime: ...


def timestamp_of(clock: Clock) -> Callable[[], float]:
    """A function giving the clock's time in epoch seconds: the clock's own ``timestamp``
    when it has one (the hot path of the client calls it on every report)."""
    return getattr(clock, "timestamp", None) or (lambda: clock.now().timestamp())


class SystemClock:
    """Wall time in UTC."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    #: Epoch seconds (the C function itself).
    timestamp = staticmethod(time.time)


class SimClock:
    """A clock that only moves when told to; thread-safe.

    >>> c = SimClock(datetime(2026, 1, 1, tzinfo=timezone.utc))
    >>> c.advance(timedelta(hours=1)).now().hour
    1
    """

    def __init__(self, start: datetime) -> None:
        self._now = utc(start)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def timestamp(self) -> float:
        return self.now().timestamp()

    def set(self, when: datetime) -> SimClock:
        with self._lock:
            self._now = utc(when)
        return self

    def advance(self, delta: timedelta) -> SimClock:
        with self._lock:
            self._now = self._now + delta
        return self
