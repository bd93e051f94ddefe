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
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

from retrain.clock import utc

__all__ = [
    "Regime",
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
        signal = np.einsum("ij,ij->i", X, self._weights[regime])
        ret = RETURN_SCALE * (signal + NOISE_RATIO * noise)
        y = (ret > 0).astype(np.int8)
        for a in (ts, X, y, ret, regime):
            a.flags.writeable = False  # blocks are cached and shared
        return MarketRows(ts, X, y, ret, regime)
