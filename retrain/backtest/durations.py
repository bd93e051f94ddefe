"""Durations on the command line: ``90s``, ``5m``, ``6h``, ``1d``, ``1w``, ``1h30m``.

A bare number is seconds. Used by every backtest option that takes a duration
(``--label-delay``, ``--warmup``, ``--period``, ``every:<duration>``).

>>> parse_duration("1h30m")
datetime.timedelta(seconds=5400)
>>> format_duration(parse_duration("1d"))
'1d'
"""

from __future__ import annotations

import re
from datetime import timedelta

from retrain.errors import ConfigError

__all__ = ["parse_duration", "format_duration"]

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
    """The shortest exact spelling: ``1d``, ``6h``, ``90m``, ``45s`` (``0s`` for zero)."""
    secs = d.total_seconds()
    if secs == 0:
        return "0s"
    for unit in ("w", "d", "h", "m", "s"):
        n = secs / _UNITS[unit]
        if n >= 1 and float(n).is_integer():
            return f"{int(n)}{unit}"
    return f"{secs:g}s"
