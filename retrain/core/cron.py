"""The one cron reader: schedule entries as croniter reads them, with Celery's crontab semantics.

Beat turns each ``[models.X.schedule]`` entry into a ``celery.schedules.crontab`` from
:meth:`retrain.config.ScheduleSettings.crontab_fields`; the model file is validated, and the
backtest's simulated clock finds the minutes an entry fires, with :class:`Crontab` here.
Both sides read the same five fields: ``*``, ``N``, ``A-B``, ``*/S``, ``A-B/S``, lists with
``,``, and day and month names. As with Celery's crontab, day of month and day of week
must both match (croniter's ``day_or=False``); times are local to the configured zone.

>>> from datetime import datetime, timezone
>>> c = Crontab.from_fields({"minute": "0", "hour": "2"}, "UTC")
>>> [t.isoformat() for t in c.fired(datetime(2026, 1, 5, 1, 50, tzinfo=timezone.utc),
...                                  datetime(2026, 1, 5, 2, 5, tzinfo=timezone.utc))]
['2026-01-05T02:00:00+00:00']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from croniter import croniter

from retrain.core.errors import ConfigError

__all__ = ["Crontab", "FIELDS", "expression"]

#: The crontab fields, in the order of a cron expression (Celery's keyword names).
FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
_MINUTE = timedelta(minutes=1)


def expression(fields: Mapping[str, str]) -> str:
    """The five-field cron expression of Celery-style crontab keywords (missing ones are ``*``);
    raises :class:`ConfigError` naming the entry when croniter cannot read it."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ConfigError(f"schedule: unknown crontab field(s) {', '.join(sorted(unknown))}; "
                          f"fields are {', '.join(FIELDS)}")
    expr = " ".join(str(fields.get(f, "*")).strip() or "*" for f in FIELDS)
    if not croniter.is_valid(expr):
        raise ConfigError(f"schedule: cannot read the crontab {expr!r} (minute hour day-of-month month "
                          f"day-of-week: '*', 'N', 'A-B', '*/S', lists with ',', day and month names)")
    return expr


_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


@dataclass(frozen=True)
class Crontab:
    expr: str
    tz: ZoneInfo
    # croniter's expansion of each field, as sets: matching a minute is five lookups.
    sets: tuple[frozenset[int], ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_fields(cls, fields: Mapping[str, str], timezone_name: str) -> Crontab:
        expr = expression(fields)
        expanded = croniter(expr).expanded
        sets = tuple(frozenset(range(lo, hi + 1)) if values == ["*"] else frozenset(int(v) % 7 if i == 4 else int(v)
                                                                                     for v in values)
                     for i, (values, (lo, hi)) in enumerate(zip(expanded, _RANGES, strict=True)))
        return cls(expr, ZoneInfo(timezone_name), sets)

    def matches(self, when: datetime) -> bool:
        """True if the entry fires at the whole minute ``when`` (day of month and of week both)."""
        t = when.astimezone(self.tz)
        minutes, hours, days, months, weekdays = self.sets
        return (t.minute in minutes and t.hour in hours and t.day in days and t.month in months
                and t.isoweekday() % 7 in weekdays)

    def fired(self, after: datetime, until: datetime) -> list[datetime]:
        """The whole minutes ``t`` with ``after < t <= until`` at which the entry fires (UTC)."""
        out = []
        t = self.next_after(after)
        while t is not None and t <= until:
            out.append(t)
            t = self.next_after(t)
        return out

    def next_after(self, after: datetime) -> datetime | None:
        """The first whole minute ``t > after`` at which the entry fires (UTC), None if never.

        croniter walks local time; a local time that a change to summer time skips does not
        exist, and one the change back repeats is two instants: each candidate is taken on its
        UTC minute and checked with :meth:`matches`, so that both instants of a repeated hour
        fire, as minute by minute they do.
        """
        start = after.astimezone(timezone.utc).replace(second=0, microsecond=0)
        it = croniter(self.expr, start.astimezone(self.tz), day_or=False)
        for _ in range(100_000):
            nxt: datetime = it.get_next(datetime)
            t = nxt.astimezone(timezone.utc)
            # The repeated hour of a change back: the same wall time one hour later matches too.
            for cand in (t - timedelta(hours=1), t):
                if cand > start and self.matches(cand) and _is_minute(cand):
                    return cand
        return None


def _is_minute(t: datetime) -> bool:
    return t.second == 0 and t.microsecond == 0
