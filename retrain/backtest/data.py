"""The rows a backtest replays: loaded from CSV or Parquet into time-ordered arrays.

One row is one prediction event: a time, the features the model saw, the binary
``label`` it predicts and, optionally, the asset's ``return`` over the
prediction's horizon. Rows with a missing or non-finite value in a used column
are skipped and counted (``ReplayData.skipped``), never guessed.

Times may be epoch numbers (seconds; milliseconds, microseconds and nanoseconds
are recognised by magnitude) or ISO 8601 strings (naive ones are UTC). Parquet
needs ``pyarrow`` (``pip install 'retrain[parquet]'``); CSV needs nothing.

>>> d = from_arrays([60.0, 0.0], [[1.0], [2.0]], [1, 0], features=["x"])
>>> d.ts.tolist(), d.y.tolist()
([0.0, 60.0], [0, 1])
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from retrain.core.errors import ConfigError, PayloadError

__all__ = ["ReplayData", "load_data", "from_arrays", "market_data", "write_csv"]


@dataclass(frozen=True, eq=False)
class ReplayData:
    """Time-ordered rows: ``ts`` float64 epoch seconds, ``X`` float64 ``(n, k)``, ``y`` int8 0/1,
    ``ret`` float64 or None, ``keys`` the routing keys (None: the row number)."""

    ts: np.ndarray
    X: np.ndarray
    y: np.ndarray
    ret: np.ndarray | None
    features: tuple[str, ...]
    keys: tuple[str, ...] | None = None
    source: str = "<memory>"
    skipped: int = 0
    columns: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @property
    def start(self) -> datetime:
        return datetime.fromtimestamp(float(self.ts[0]), tz=timezone.utc)

    @property
    def end(self) -> datetime:
        return datetime.fromtimestamp(float(self.ts[-1]), tz=timezone.utc)

    @property
    def span(self) -> timedelta:
        return timedelta(seconds=float(self.ts[-1] - self.ts[0]))

    @property
    def rows_per_minute(self) -> float:
        """Rows a minute: the intervals between rows over the span (one row a day is 1/1440 exactly)."""
        minutes = max(self.span.total_seconds() / 60.0, 1.0)
        return max(len(self) - 1, 1) / minutes

    def key(self, i: int) -> str:
        return self.keys[i] if self.keys is not None else str(i)

    def describe(self) -> dict:
        return {"source": self.source, "rows": len(self), "skipped_rows": self.skipped,
                "features": list(self.features), "start": self.start.isoformat(), "end": self.end.isoformat(),
                "rows_per_minute": round(self.rows_per_minute, 4), "has_return": self.ret is not None,
                "columns": dict(self.columns)}


def from_arrays(ts, X, y, ret=None, *, features: Sequence[str] | None = None, keys: Sequence[str] | None = None,
                source: str = "<memory>", skipped: int = 0, columns: dict[str, str] | None = None) -> ReplayData:
    """Validate, drop rows with non-finite values, and sort by time (stable)."""
    ts = np.asarray(ts, dtype=np.float64).reshape(-1)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    y_raw = np.asarray(y, dtype=np.float64).reshape(-1)
    r = None if ret is None else np.asarray(ret, dtype=np.float64).reshape(-1)
    n = ts.shape[0]
    if X.shape[0] != n or y_raw.shape[0] != n or (r is not None and r.shape[0] != n):
        raise PayloadError(f"columns differ in length: time {n}, features {X.shape[0]}, label {y_raw.shape[0]}"
                           + ("" if r is None else f", return {r.shape[0]}"))
    names = tuple(features) if features is not None else tuple(f"f{i}" for i in range(X.shape[1]))
    if len(names) != X.shape[1]:
        raise PayloadError(f"{len(names)} feature names for {X.shape[1]} feature columns")
    ok = np.isfinite(ts) & np.isfinite(y_raw) & np.all(np.isfinite(X), axis=1)
    if r is not None:
        ok &= np.isfinite(r)
    bad_label = ok & ~np.isin(y_raw, (0.0, 1.0))
    if bad_label.any():
        i = int(np.flatnonzero(bad_label)[0])
        raise PayloadError(f"{source}: the label must be 0 or 1; row {i + 1} has {y_raw[i]:g}")
    order = np.argsort(ts[ok], kind="stable")
    idx = np.flatnonzero(ok)[order]
    if idx.size < 2:
        raise PayloadError(f"{source}: fewer than 2 usable rows ({int(n - ok.sum())} skipped for missing values)")
    kept_keys = tuple(keys[i] for i in idx) if keys is not None else None
    return ReplayData(ts=ts[idx], X=np.ascontiguousarray(X[idx]), y=y_raw[idx].astype(np.int8),
                      ret=None if r is None else r[idx], features=names, keys=kept_keys, source=source,
                      skipped=skipped + int(n - ok.sum()), columns=dict(columns or {}))


def _to_float(v: str) -> float:
    v = v.strip()
    if v == "":
        return math.nan
    low = v.lower()
    if low in ("true", "false"):
        return 1.0 if low == "true" else 0.0
    return float(v)


def _is_numeric(values: list[str]) -> bool:
    seen = False
    for v in values:
        if v.strip() == "":
            continue
        try:
            _to_float(v)
        except ValueError:
            return False
        seen = True
    return seen


def _epoch_scale(x: np.ndarray) -> np.ndarray:
    """Epoch numbers in seconds, whatever unit they came in (told apart by magnitude)."""
    finite = x[np.isfinite(x)]
    big = float(np.nanmax(np.abs(finite))) if finite.size else 0.0
    for limit, div in ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3)):
        if big > limit:
            return x / div
    return x


def _parse_times(values: list, column: str) -> np.ndarray:
    try:
        nums = np.asarray([_to_float(v) if isinstance(v, str) else float(v) for v in values], dtype=np.float64)
        return _epoch_scale(nums)
    except (TypeError, ValueError):
        pass
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if isinstance(v, datetime):
            dt = v
        elif v is None or str(v).strip() == "":
            out[i] = math.nan
            continue
        else:
            s = str(v).strip()
            try:
                dt = datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
            except ValueError:
                raise PayloadError(f"--time {column}: row {i + 1} has {s!r}, neither an epoch number nor an "
                                   "ISO 8601 time") from None
        out[i] = (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
    return out


def _read_csv(path: Path) -> dict[str, list[str]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise PayloadError(f"{path}: empty file") from None
        cols: list[list[str]] = [[] for _ in header]
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise PayloadError(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}")
            for c, v in zip(cols, row):
                c.append(v)
    if len(set(header)) != len(header):
        raise PayloadError(f"{path}: duplicate column names in the header")
    return dict(zip(header, cols))


def _read_parquet(path: Path) -> tuple[dict[str, list], set[str]]:
    try:
        import pyarrow.parquet as pq
        import pyarrow.types as pat
    except ImportError:
        raise ConfigError(f"{path}: reading Parquet needs pyarrow (pip install 'retrain[parquet]'); "
                          "or convert the file to CSV") from None
    table = pq.read_table(path)
    numeric = {f.name for f in table.schema
               if pat.is_integer(f.type) or pat.is_floating(f.type) or pat.is_boolean(f.type)}
    return {name: table.column(name).to_pylist() for name in table.column_names}, numeric


def load_data(path: str | Path, *, time: str, label: str, ret: str | None = None,
              features: Sequence[str] | None = None, key: str | None = None) -> ReplayData:
    """Read ``path`` (``.csv`` or ``.parquet``/``.pq``); ``features`` default to every other numeric column."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"DATA: no file at {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        cols, numeric = _read_parquet(path)
    else:
        cols = _read_csv(path)
        numeric = None
    for opt, name in (("--time", time), ("--label", label), ("--return", ret), ("--key", key)):
        if name is not None and name not in cols:
            raise ConfigError(f"{opt}: no column {name!r} in {path} (columns: {', '.join(cols)})")
    reserved = {time, label, ret, key} - {None}
    if features is None:
        features = [c for c in cols if c not in reserved
                    and (c in numeric if numeric is not None else _is_numeric(cols[c]))]
        if not features:
            raise ConfigError(f"--features: {path} has no numeric column besides time, label and return")
    else:
        missing = [f for f in features if f not in cols]
        if missing:
            raise ConfigError(f"--features: no column(s) {', '.join(missing)} in {path}")
        clash = [f for f in features if f in reserved]
        if clash:
            raise ConfigError(f"--features: {', '.join(clash)} is the time, label, return or key column")

    def numbers(name: str) -> np.ndarray:
        vals = cols[name]
        try:
            return np.asarray([math.nan if v is None else (_to_float(v) if isinstance(v, str) else float(v))
                               for v in vals], dtype=np.float64)
        except (TypeError, ValueError):
            raise PayloadError(f"column {name!r} of {path} is not numeric") from None

    ts = _parse_times(cols[time], time)
    X = np.column_stack([numbers(f) for f in features]) if features else np.empty((len(ts), 0))
    keys = [str(v) for v in cols[key]] if key else None
    columns = {"time": time, "label": label}
    if ret:
        columns["return"] = ret
    if key:
        columns["key"] = key
    return from_arrays(ts, X, numbers(label), numbers(ret) if ret else None, features=features, keys=keys,
                       source=str(path), columns=columns)


def market_data(*, days: float = 4.0, seed: int = 7, n_features: int = 8, rows_per_minute: int = 10,
                start: datetime | None = None, regimes=None) -> ReplayData:
    """Rows of :class:`retrain.examples.market.SyntheticMarket` (regime shifts at +36 h and +84 h by default)."""
    from retrain.examples.market import DEFAULT_START, SyntheticMarket

    start = start or DEFAULT_START
    market = SyntheticMarket(seed=seed, n_features=n_features, rows_per_minute=rows_per_minute, start=start,
                             regimes=regimes)
    rows = market.rows(start, start + timedelta(days=days))
    return from_arrays(rows.ts, rows.X, rows.y, rows.ret, features=market.feature_names,
                       source=f"synthetic market (seed {seed}, {n_features} features, {rows_per_minute}/min)",
                       columns={"time": "time", "label": "label", "return": "ret"})


def write_csv(data: ReplayData, path: str | Path, *, iso_times: bool = True) -> Path:
    """Write ``data`` as a CSV with columns time, the features, label and ret (if any)."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", *data.features, "label"] + (["ret"] if data.ret is not None else []))
        for i in range(len(data)):
            t = (datetime.fromtimestamp(float(data.ts[i]), tz=timezone.utc).isoformat() if iso_times
                 else repr(float(data.ts[i])))
            row = [t, *(repr(float(v)) for v in data.X[i]), int(data.y[i])]
            if data.ret is not None:
                row.append(repr(float(data.ret[i])))
            w.writerow(row)
    return path
