"""A deterministic synthetic market stream with regime changes.

The example direction model (``retrain.examples.direction``), the demo, the tests
and the backtester all read their data from here. The stream must be
reproducible for any time range without storing anything, so rows are generated
from ``(seed, hour-block index)`` only: asking for the same range twice, or for a
sub-range, yields identical rows.

Model of a row (all features standard normal, one row every ``60 / rows_per_minute``
seconds)::

    s   = w_regime . x                       # w unit-norm, so s ~ N(0, 1)
    ret = RETURN_SCALE * (s + NOISE_RATIO * e),  e ~ N(0, 1)
    y   = 1 if ret > 0 else 0

With ``NOISE_RATIO`` = 3.0 the best possible classifier (``sign(s)``) scores
``1/2 + arctan(1/NOISE_RATIO)/pi`` ~= 0.602, so a model fitted on a day of data
lands around 0.60, in the 58-62 % band of the requirement. A classifier whose weight direction has cosine ``rho``
with ``w`` scores ``1/2 + arcsin(rho / sqrt(1 + NOISE_RATIO**2))/pi``; the default
regimes use mutually orthogonal weight vectors, so a model of an old regime
falls to ~0.50 after a shift.

Default regimes (documented because the demo and tests rely on them): regime 0
from ``start``, regime 1 from ``start + 36 h``, regime 2 from ``start + 84 h``.
The stream extends before ``start`` (those times belong to the first regime),
so a model can be trained on a full lookback window at ``start`` itself.

Optional events (none by default; :func:`events_from_params` reads them from a
model's ``params``), applied after the random draws so that the stream without
them is unchanged and every stream stays a function of ``(seed, block)``:

* :class:`FeatureShift`: from ``starts_at`` (until ``ends_at``, if any) some
  features move by ``shift_sd`` standard deviations. Labels are computed from the
  moved features with the regime's weights, so the label relation holds and a
  model keeps its accuracy: it is data drift, not a performance drop.
* :class:`FlashCrash`: from ``starts_at`` to ``ends_at`` the market turns against
  what every regime reads as "up": with ``v`` the unit sum of all the regimes'
  weights, ``ret = RETURN_SCALE * (-strength * v . x + NOISE_RATIO * e)``. Any
  model that learned a regime (``w . v`` = 0.58 for the default orthogonal
  regimes) is then right only about 3 times in 10, a model of the current regime
  falls from 0.60, a stale one from 0.50, and every strategy loses several times
  its usual return per trade: per-bucket accuracy and returns collapse.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

from retrain.core.clock import utc

__all__ = [
    "Regime",
    "FeatureShift",
    "FlashCrash",
    "events_from_params",
    "MarketRows",
    "SyntheticMarket",
    "DEFAULT_START",
    "DEFAULT_SHIFTS",
    "NOISE_RATIO",
    "RETURN_SCALE",
    "bayes_accuracy",
]

DEFAULT_START = datetime(2026, 1, 5, tzinfo=timezone.utc)
# Offsets from ``start`` of the default regime shifts.
DEFAULT_SHIFTS: tuple[timedelta, ...] = (timedelta(hours=36), timedelta(hours=84))

# Noise std relative to the signal std; chosen for a ~0.60 ceiling (see module doc).
NOISE_RATIO = 3.0
# Scales returns to a plausible per-minute magnitude (~0.3 %); irrelevant to labels.
RETURN_SCALE = 0.001

# Rows are generated a block of minutes at a time: large enough to vectorise,
# small enough that a one-minute request does not generate a whole day.
_BLOCK_MINUTES = 60
# Bounded cache of generated blocks; the demo asks for consecutive small ranges.
_CACHE_BLOCKS = 32


def bayes_accuracy(noise_ratio: float = NOISE_RATIO) -> float:
    """Best achievable accuracy in a stable regime for a given noise ratio."""
    return 0.5 + math.atan(1.0 / noise_ratio) / math.pi


@dataclass(frozen=True)
class Regime:
    """A market regime: from ``starts_at`` on, labels follow ``weights``.

    ``weights`` is either a vector of length ``n_features`` (normalised to unit
    length by the market) or an integer seed from which a random direction is
    drawn.
    """

    starts_at: datetime
    weights: int | Sequence[float] | np.ndarray


@dataclass(frozen=True)
class FeatureShift:
    """From ``starts_at`` (to ``ends_at``; None: for good) features ``features`` (indices) move by ``shift_sd``."""

    starts_at: datetime
    features: tuple[int, ...]
    shift_sd: float = 0.5
    ends_at: datetime | None = None


@dataclass(frozen=True)
class FlashCrash:
    """From ``starts_at`` to ``ends_at`` returns are ``-strength`` times the all-regimes signal plus the usual noise."""

    starts_at: datetime
    ends_at: datetime
    strength: float = 20.0


def _hours(params, key: str) -> float | None:
    v = params.get(key)
    return None if v is None else float(v)


def events_from_params(params, start: datetime) -> tuple[FeatureShift | FlashCrash, ...]:
    """The events a model's ``params`` table asks for (all optional; times in hours after ``start``).

    ``drift_at_hours``: when features ``drift_features`` (names ``f<i>`` or indices,
    default f0, f1, f2) move by ``drift_shift_sd`` (default 0.5) standard deviations,
    for ``drift_hours`` hours (default: for good). ``crash_at_hours``: when a flash
    crash of ``crash_minutes`` minutes (default 45) and ``crash_strength`` (default
    20) starts. Example (the demo's model file)::

        [models.direction.params]
        drift_at_hours = 60
        crash_at_hours = 100
    """
    start = utc(start)
    events: list[FeatureShift | FlashCrash] = []
    at = _hours(params, "drift_at_hours")
    if at is not None:
        names = params.get("drift_features", ("f0", "f1", "f2"))
        idx = tuple(sorted({int(str(f).lstrip("f")) for f in names}))
        length = _hours(params, "drift_hours")
        events.append(FeatureShift(start + timedelta(hours=at), idx, float(params.get("drift_shift_sd", 0.5)),
                                   None if length is None else start + timedelta(hours=at + length)))
    at = _hours(params, "crash_at_hours")
    if at is not None:
        minutes = float(params.get("crash_minutes", 45))
        events.append(FlashCrash(start + timedelta(hours=at), start + timedelta(hours=at, minutes=minutes),
                                 float(params.get("crash_strength", 20.0))))
    return tuple(events)


@dataclass(frozen=True)
class MarketRows:
    """Rows of the stream, in time order.

    ``ts`` is int64 epoch seconds (UTC), ``X`` is float64 ``(n, n_features)``,
    ``y`` is int8 (1 if ``ret > 0``), ``ret`` is the float64 return realised over
    the minute after ``ts``, ``regime`` the int16 index of the regime in force.
    """

    ts: np.ndarray
    X: np.ndarray
    y: np.ndarray
    ret: np.ndarray
    regime: np.ndarray

    def __len__(self) -> int:
        return int(self.ts.shape[0])


class SyntheticMarket:
    """Deterministic market stream; see the module docstring for the model.

    Minute boundaries are ``start + k * 60 s`` (``start`` is truncated to whole
    seconds); row ``j`` of a minute is stamped ``minute + (60 * j) // rows_per_minute``.
    """

    def __init__(
        self,
        seed: int = 7,
        n_features: int = 8,
        rows_per_minute: int = 10,
        start: datetime = DEFAULT_START,
        regimes: Sequence[Regime] | None = None,
        events: Sequence[FeatureShift | FlashCrash] = (),
    ) -> None:
        if n_features < 1:
            raise ValueError("n_features must be >= 1")
        if not 1 <= rows_per_minute <= 60:
            # More than one row per second would collide on integer-second stamps.
            raise ValueError("rows_per_minute must be between 1 and 60")
        if seed < 0:
            raise ValueError("seed must be non-negative")
        self.seed = int(seed)
        self.n_features = int(n_features)
        self.rows_per_minute = int(rows_per_minute)
        self.start = utc(start)
        self._origin = math.floor(self.start.timestamp())
        if regimes is None:
            regimes = self._default_regimes()
        if not regimes:
            raise ValueError("at least one regime is required")
        ordered = sorted(regimes, key=lambda r: utc(r.starts_at))
        self.regimes: tuple[Regime, ...] = tuple(ordered)
        self._regime_starts = np.array(
            [utc(r.starts_at).timestamp() for r in ordered], dtype=np.float64
        )
        self._weights = np.stack([self._resolve_weights(r.weights) for r in ordered])
        self.events: tuple[FeatureShift | FlashCrash, ...] = tuple(events)
        for ev in self.events:
            if isinstance(ev, FeatureShift) and any(not 0 <= j < self.n_features for j in ev.features):
                raise ValueError(f"feature shift of features {ev.features}: the market has {self.n_features}")
        # Offsets of rows within a minute, shared by every block.
        self._row_offsets = (np.arange(rows_per_minute, dtype=np.int64) * 60) // rows_per_minute
        self._cache: OrderedDict[int, MarketRows] = OrderedDict()

    # -- public API -------------------------------------------------------------

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f"f{i}" for i in range(self.n_features))

    @property
    def weights(self) -> np.ndarray:
        """Unit weight vectors of the regimes, one row per regime (a copy)."""
        return self._weights.copy()

    def regime_index_at(self, t: datetime) -> int:
        """Index in ``self.regimes`` of the regime in force at ``t``."""
        i = int(np.searchsorted(self._regime_starts, utc(t).timestamp(), side="right")) - 1
        return max(i, 0)

    def regime_at(self, t: datetime) -> Regime:
        """The regime in force at ``t``."""
        return self.regimes[self.regime_index_at(t)]

    def rows(self, start: datetime, end: datetime) -> MarketRows:
        """All rows with ``start <= ts < end`` (half-open, so ranges tile)."""
        s = utc(start).timestamp()
        e = utc(end).timestamp()
        if e <= s:
            return self._empty()
        block_s = _BLOCK_MINUTES * 60
        first = math.floor((s - self._origin) / block_s)
        last = math.ceil((e - self._origin) / block_s) - 1
        blocks = [self._block(b) for b in range(first, last + 1)]
        if len(blocks) == 1:
            ts = blocks[0].ts
            mask = (ts >= s) & (ts < e)
            b = blocks[0]
            return MarketRows(b.ts[mask], b.X[mask], b.y[mask], b.ret[mask], b.regime[mask])
        ts = np.concatenate([b.ts for b in blocks])
        # Only the first and last blocks can be partial; slice rather than mask.
        lo = int(np.searchsorted(ts, s, side="left"))
        hi = int(np.searchsorted(ts, e, side="left"))
        return MarketRows(
            ts[lo:hi],
            np.concatenate([b.X for b in blocks])[lo:hi],
            np.concatenate([b.y for b in blocks])[lo:hi],
            np.concatenate([b.ret for b in blocks])[lo:hi],
            np.concatenate([b.regime for b in blocks])[lo:hi],
        )

    # -- internals --------------------------------------------------------------

    def _default_regimes(self) -> list[Regime]:
        # Mutually orthogonal directions: a model of any earlier regime is
        # uninformative (~0.50) in a later one. Gram-Schmidt on seeded draws.
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, 1 << 31])))
        n_regimes = 1 + len(DEFAULT_SHIFTS)
        ws: list[np.ndarray] = []
        for _ in range(n_regimes):
            v = rng.standard_normal(self.n_features)
            # Only n_features - 1 earlier directions can be projected out.
            for u in ws[max(0, len(ws) - (self.n_features - 1)) :]:
                v = v - (v @ u) * u
            ws.append(v / np.linalg.norm(v))
        starts = [self.start] + [self.start + d for d in DEFAULT_SHIFTS]
        return [Regime(t, w) for t, w in zip(starts, ws)]

    def _resolve_weights(self, w: int | Sequence[float] | np.ndarray) -> np.ndarray:
        if isinstance(w, (int, np.integer)):
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(w), 1 << 30])))
            v = rng.standard_normal(self.n_features)
        else:
            v = np.asarray(w, dtype=np.float64).reshape(-1)
            if v.shape[0] != self.n_features:
                raise ValueError(f"regime weights need {self.n_features} values, got {v.shape[0]}")
        norm = float(np.linalg.norm(v))
        if not norm > 0:
            raise ValueError("regime weights must not be all zero")
        return v / norm

    def _empty(self) -> MarketRows:
        return MarketRows(
            np.empty(0, np.int64),
            np.empty((0, self.n_features), np.float64),
            np.empty(0, np.int8),
            np.empty(0, np.float64),
            np.empty(0, np.int16),
        )

    def _block(self, b: int) -> MarketRows:
        cached = self._cache.get(b)
        if cached is not None:
            self._cache.move_to_end(b)
            return cached
        rows = self._generate_block(b)
        self._cache[b] = rows
        if len(self._cache) > _CACHE_BLOCKS:
            self._cache.popitem(last=False)
        return rows

    def _generate_block(self, b: int) -> MarketRows:
        # SeedSequence entropy must be non-negative: encode the sign separately.
        # The stream of a block depends only on (seed, b), hence determinism.
        ss = np.random.SeedSequence([self.seed, 0 if b >= 0 else 1, abs(b)])
        rng = np.random.Generator(np.random.PCG64(ss))
        n = _BLOCK_MINUTES * self.rows_per_minute
        X = rng.standard_normal((n, self.n_features))
        noise = rng.standard_normal(n)
        minute_ts = self._origin + (b * _BLOCK_MINUTES + np.arange(_BLOCK_MINUTES, dtype=np.int64)) * 60
        ts = (minute_ts[:, None] + self._row_offsets[None, :]).reshape(-1)
        regime = np.searchsorted(self._regime_starts, ts, side="right") - 1
        np.maximum(regime, 0, out=regime)
        regime = regime.astype(np.int16)
        self._shift_features(ts, X)
        signal = np.einsum("ij,ij->i", X, self._weights[regime])
        ret = RETURN_SCALE * (self._crash(ts, X, signal) + NOISE_RATIO * noise)
        y = (ret > 0).astype(np.int8)
        for a in (ts, X, y, ret, regime):
            a.flags.writeable = False  # blocks are cached and shared
        return MarketRows(ts, X, y, ret, regime)

    @staticmethod
    def _span(ts: np.ndarray, starts_at: datetime, ends_at: datetime | None) -> np.ndarray:
        mask = ts >= utc(starts_at).timestamp()
        if ends_at is not None:
            mask &= ts < utc(ends_at).timestamp()
        return mask

    def _shift_features(self, ts: np.ndarray, X: np.ndarray) -> None:
        for ev in self.events:
            if isinstance(ev, FeatureShift):
                rows = self._span(ts, ev.starts_at, ev.ends_at)
                if rows.any():
                    X[np.ix_(rows, np.asarray(ev.features, dtype=np.intp))] += ev.shift_sd

    def _crash(self, ts: np.ndarray, X: np.ndarray, signal: np.ndarray) -> np.ndarray:
        for ev in self.events:
            if isinstance(ev, FlashCrash):
                rows = self._span(ts, ev.starts_at, ev.ends_at)
                if rows.any():
                    up = self._weights.sum(axis=0)
                    up = up / np.linalg.norm(up)
                    signal = np.where(rows, -ev.strength * (X @ up), signal)
        return signal
