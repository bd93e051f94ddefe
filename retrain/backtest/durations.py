"""Durations on the command line: ``90s``, ``5m``, ``6h``, ``1d``, ``1w``, ``1h30m``.

A bare number is seconds. Used by every backtest option that takes a duration
(``--label-delay``, ``--warmup``, ``--period``, ``every:<duration>``).

>>> parse_duration("1h30m")
datetime.timedelta(seconds=5400)
>>> format_duration(parse_duration("1d")), format_duration(parse_duration("1249m"))
('1d', '20h49m')
>>> human_duration(parse_duration("5w4d23h40m48s")), human_duration(parse_duration("90m"))
('40d', '1.5h')
"""

from __future__ import annotations

import re
from datetime import timedelta

from retrain.core.errors import ConfigError

__all__ = ["parse_duration", "format_duration", "human_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str | float | int | timedelta, what: str = "duration") -> timedelta:
    """``text`` as a non-negative timedelta; a ConfigError naming ``what`` otherwise."""
    if isinstance(text, timedelta):
        value = text
    elif isinstance(text, (int, float)):
        value = timedelta(seconds=float(text))
    else:
        s = str(text).strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", s):
            value = timedelta(seconds=float(s))
        else:
            pos, total = 0, 0.0
            for m in _PART.finditer(s):
                if m.start() != pos:
                    break
                total += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if pos != len(s) or not s:
                raise ConfigError(f"{what}: expected a duration such as 90s, 5m, 6h, 1d, 1w or 1h30m, got {text!r}")
            value = timedelta(seconds=total)
    if value < timedelta(0):
        raise ConfigError(f"{what}: must not be negative, got {text!r}")
    return value


def format_duration(d: timedelta) -> str:
    """A compact exact spelling: ``1d``, ``6h``, ``20h49m``, ``45s`` (``0s`` for zero)."""
    secs = d.total_seconds()
    if secs == 0:
        return "0s"
    if not float(secs).is_integer():
        return f"{secs:g}s"
    rest, parts = int(secs), []
    for unit in ("w", "d", "h", "m", "s"):
        n, rest = divmod(rest, _UNITS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def human_duration(d: timedelta) -> str:
    """``d`` rounded for a title or a sentence, in its largest unit: ``40d``, ``1.5h``, ``20m``, ``3y``.

    Below 10 of the unit one decimal is kept (dropped when it is 0); from 10 on, none.
    Years (365 days) only from 2 years on, so that ``400d`` stays in days.
    """
    secs = abs(d.total_seconds())
    for unit, size in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size * (2 if unit == "y" else 1) or unit == "s":
            v = secs / size
            text = f"{v:.0f}" if v >= 10 or round(v, 1).is_integer() else f"{v:.1f}"
            return ("-" if d.total_seconds() < 0 else "") + text + unit
    return "0s"  # pragma: no cover
