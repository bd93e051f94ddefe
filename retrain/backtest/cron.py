"""Schedule entries on a simulated clock, without Celery: which crontab minutes fell in a tick.

Beat turns each ``[models.X.schedule]`` entry into a ``celery.schedules.crontab``
(see :meth:`retrain.config.ScheduleSettings.crontab_fields`). The core may not
import Celery, so the replay reads the same fields here: ``*``, ``N``, ``A-B``,
``*/S``, ``A-B/S``, lists with ``,``, and day names (``sun`` = 0 = 7). As with
Celery's crontab, day of month and day of week must both match.

>>> from datetime import datetime, timezone
>>> c = Crontab.from_fields({"minute": "0", "hour": "2"}, "UTC")
>>> [t.isoformat() for t in c.fired(datetime(2026, 1, 5, 1, 50, tzinfo=timezone.utc),
...                                  datetime(2026, 1, 5, 2, 5, tzinfo=timezone.utc))]
['2026-01-05T02:00:00+00:00']
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from retrain.core.errors import ConfigError

__all__ = ["Crontab"]

_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                       "nov", "dec"), start=1)}
_MINUTE = timedelta(minutes=1)


def _value(tok: str, names: dict[str, int]) -> int:
    tok = tok.strip().lower()
    if tok in names:
        return names[tok]
    try:
        return int(tok)
    except ValueError:
        raise ConfigError(f"schedule: cannot read {tok!r} in a crontab field") from None


def _field(text: str, lo: int, hi: int, names: dict[str, int] | None = None) -> frozenset[int]:
    names = names or {}
    out: set[int] = set()
    for part in str(text).split(","):
        part, _, step_s = part.partition("/")
        step = int(step_s) if step_s else 1
        if part.strip() in ("*", ""):
            a, b = lo, hi
        elif "-" in part:
            a_s, b_s = part.split("-", 1)
            a, b = _value(a_s, names), _value(b_s, names)
        else:
            a = b = _value(part, names)
            if step_s:
                b = hi
        if step < 1:
            raise ConfigError(f"schedule: step must be >= 1 in {text!r}")
        out.update(range(a, b + 1, step))
    return frozenset(out)


@dataclass(frozen=True)
class Crontab:
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 = Sunday
    tz: ZoneInfo

    @classmethod
    def from_fields(cls, fields: dict[str, str], timezone_name: str) -> Crontab:
        dow = _field(fields.get("day_of_week", "*"), 0, 7, _DAYS)
        return cls(
            minutes=_field(fields.get("minute", "*"), 0, 59),
            hours=_field(fields.get("hour", "*"), 0, 23),
            days_of_month=_field(fields.get("day_of_month", "*"), 1, 31),
            months=_field(fields.get("month_of_year", "*"), 1, 12, _MONTHS),
            days_of_week=frozenset(d % 7 for d in dow),
            tz=ZoneInfo(timezone_name),
        )

    def matches(self, when: datetime) -> bool:
        local = when.astimezone(self.tz)
        return (local.minute in self.minutes and local.hour in self.hours and local.day in self.days_of_month
                and local.month in self.months and (local.isoweekday() % 7) in self.days_of_week)

    def fired(self, after: datetime, until: datetime) -> list[datetime]:
        """The whole minutes ``t`` with ``after < t <= until`` at which the entry fires."""
        out = []
        t = self.next_after(after)
        while t is not None and t <= until:
            out.append(t)
            t = self.next_after(t)
        return out

    def next_after(self, after: datetime, horizon_days: int = 366 * 8) -> datetime | None:
        """The first whole minute ``t > after`` at which the entry fires (None within ``horizon_days``).

        Walks days, then the entry's hours and minutes of a matching day, in local time; each
        candidate is checked with :meth:`matches` on its UTC minute, so that local times a
        DST change skips never fire and one it repeats fires twice, as minute by minute.
        """
        start = after.astimezone(timezone.utc).replace(second=0, microsecond=0) + _MINUTE
        local = start.astimezone(self.tz)
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        day = local.date()
        for _ in range(horizon_days):
            if (day.day in self.days_of_month and day.month in self.months
                    and (day.isoweekday() % 7) in self.days_of_week):
                # A local time the clocks fall back over happens twice (fold 0 and 1): both count.
                times = sorted({datetime(day.year, day.month, day.day, h, m, tzinfo=self.tz, fold=fold)
                                .astimezone(timezone.utc) for h in hours for m in minutes for fold in (0, 1)})
                for t in times:
                    if t >= start and self.matches(t):
                        return t
            day += timedelta(days=1)
        return None
