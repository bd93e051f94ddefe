"""Bounded sliding windows over a binary classifier's live results.

A result is one outcome ``(y_true, y_pred, ret)``: the label, the model's
prediction and the strategy return earned on it. Three things live here:

* :class:`Counts`, the confusion counts plus the first two moments of the
  returns. It is the currency shared by the windows, the performance trigger
  and the sweep (which rebuilds ``Counts`` from the per-minute metric buckets
  in the database and adds them up). Every metric is a property of it.
* :class:`CountWindow`, the last ``size`` outcomes: a ring buffer with running
  totals, O(1) per update, ``size`` slots of memory.
* :class:`TimeWindow`, the outcomes of the last ``span`` seconds, kept as a
  ring of ``ceil(span / bucket)`` buckets of ``Counts``: O(1) amortised per
  update and memory bounded by the number of buckets, whatever the rate.

Undefined metrics (precision with no positive prediction, a Sharpe ratio from
fewer than two returns or from constant returns) are ``nan`` rather than 0, so
that a rule comparing them with a threshold cannot fire on an empty window.

>>> w = CountWindow(size=3)
>>> for y, p in [(1, 1), (0, 1), (1, 1), (0, 0)]:
...     _ = w.update(y, p)
>>> w.n, round(w.accuracy, 3), w.precision
(3, 0.667, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from retrain.core.clock import monotonic

__all__ = ["Counts", "CountWindow", "TimeWindow", "strategy_returns"]

_NAN = float("nan")


def _ratio(num: float, den: float) -> float:
    return num / den if den else _NAN


def strategy_returns(y_pred: ArrayLike, ret: ArrayLike) -> np.ndarray:
    """The strategy's return on each outcome: long on a prediction of 1, short on 0.

    ``ret`` is the market's return over the prediction's horizon, so the strategy
    earns ``+|ret|`` when the prediction got the direction right. A missing return
    (NaN) earns 0, as at ingest. The one definition behind every Sharpe ratio here:
    the live buckets, the holdout baseline and the shadow's paired counts.

    >>> strategy_returns([1, 0, 1], [0.02, 0.01, float("nan")]).tolist()
    [0.02, -0.01, 0.0]
    """
    p = np.asarray(y_pred).astype(bool, copy=False).ravel()
    r = np.nan_to_num(np.asarray(ret, dtype=np.float64).ravel(), nan=0.0)
    if r.shape != p.shape:
        raise ValueError(f"ret differs in length from y_pred: {r.size} != {p.size}")
    return np.where(p, r, -r)


@dataclass(frozen=True, slots=True)
class Counts:
    """Confusion counts and return moments of a set of outcomes.

    ``n`` is the number of outcomes; ``ret_sum`` and ``ret_sq_sum`` are the
    sum and the sum of squares of their returns. Instances add (``a + b``)
    and subtract (``a - b``, for removing a bucket from a running total).

    >>> c = Counts.from_arrays([1, 0, 1, 1], [1, 1, 0, 1], [0.1, -0.2, 0.0, 0.3])
    >>> c.tp, c.fp, c.fn, c.accuracy
    (2, 1, 1, 0.5)
    """

    n: int = 0
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    ret_sum: float = 0.0
    ret_sq_sum: float = 0.0

    @classmethod
    def of(cls, y_true: Any, y_pred: Any, ret: float = 0.0) -> Counts:
        """The counts of a single outcome."""
        t, p = bool(y_true), bool(y_pred)
        return cls(1, int(t and p), int(p and not t), int(not (t or p)), int(t and not p), float(ret), float(ret) ** 2)

    @classmethod
    def from_arrays(cls, y_true: ArrayLike, y_pred: ArrayLike, ret: ArrayLike | None = None) -> Counts:
        """The counts of many outcomes at once (labels are truthy/falsy, e.g. 0/1)."""
        t = np.asarray(y_true).astype(bool, copy=False).ravel()
        p = np.asarray(y_pred).astype(bool, copy=False).ravel()
        if t.shape != p.shape:
            raise ValueError(f"y_true and y_pred differ in length: {t.size} != {p.size}")
        tp = int(np.count_nonzero(t & p))
        pos_pred = int(np.count_nonzero(p))
        pos_true = int(np.count_nonzero(t))
        n = int(t.size)
        if ret is None:
            rs = rq = 0.0
        else:
            r = np.asarray(ret, dtype=float).ravel()
            if r.shape != t.shape:
                raise ValueError(f"ret differs in length from y_true: {r.size} != {n}")
            rs, rq = float(r.sum()), float(r @ r)
        return cls(n, tp, pos_pred - tp, n - pos_pred - pos_true + tp, pos_true - tp, rs, rq)

    def __add__(self, other: Counts) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        return Counts(
            self.n + other.n,
            self.tp + other.tp,
            self.fp + other.fp,
            self.tn + other.tn,
            self.fn + other.fn,
            self.ret_sum + other.ret_sum,
            self.ret_sq_sum + other.ret_sq_sum,
        )

    def __radd__(self, other: Any) -> Counts:
        # Lets sum(list_of_counts) work without a start value.
        if other == 0:
            return self
        return self.__add__(other)

    def __sub__(self, other: Counts) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        return Counts(
            self.n - other.n,
            self.tp - other.tp,
            self.fp - other.fp,
            self.tn - other.tn,
            self.fn - other.fn,
            self.ret_sum - other.ret_sum,
            self.ret_sq_sum - other.ret_sq_sum,
        )

    @property
    def hits(self) -> int:
        """Correct predictions (tp + tn)."""
        return self.tp + self.tn

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.n)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def mean_return(self) -> float:
        return _ratio(self.ret_sum, self.n)

    @property
    def std_return(self) -> float:
        """Sample standard deviation (ddof=1) of the returns; nan below 2 outcomes."""
        if self.n < 2:
            return _NAN
        var = (self.ret_sq_sum - self.ret_sum * self.ret_sum / self.n) / (self.n - 1)
        # Cancellation in sum-of-squares can leave a tiny negative number.
        return math.sqrt(var) if var > 0 else 0.0

    @property
    def sharpe(self) -> float:
        """Per-period Sharpe ratio, mean / std of the returns (nan if undefined)."""
        return self.sharpe_ratio()

    def sharpe_ratio(self, annualisation: float = 1.0) -> float:
        """Sharpe ratio scaled by ``sqrt(annualisation)`` (periods per year, e.g. 252)."""
        sd = self.std_return
        if not sd or math.isnan(sd):
            return _NAN
        # sd is the sample std; guard against values that are zero up to rounding.
        if sd <= 1e-12 * max(1.0, abs(self.mean_return)):
            return _NAN
        return self.mean_return / sd * math.sqrt(annualisation)

    def metric(self, name: str) -> float:
        """A metric by name: accuracy, precision, recall, f1 or sharpe."""
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(METRICS)}")
        return float(getattr(self, name))

    def metrics(self) -> dict[str, float]:
        """All five metrics, by name."""
        return {m: float(getattr(self, m)) for m in METRICS}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Counts:
        return cls(**d)


METRICS = ("accuracy", "precision", "recall", "f1", "sharpe")


class _Metrics:
    """Metric properties for anything exposing ``counts`` and ``annualisation``."""

    annualisation: float

    @property
    def counts(self) -> Counts:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def n(self) -> int:
        return self.counts.n

    @property
    def accuracy(self) -> float:
        return self.counts.accuracy

    @property
    def precision(self) -> float:
        return self.counts.precision

    @property
    def recall(self) -> float:
        return self.counts.recall

    @property
    def f1(self) -> float:
        return self.counts.f1

    @property
    def sharpe(self) -> float:
        """Sharpe ratio of the window's returns, scaled by ``sqrt(annualisation)``."""
        return self.counts.sharpe_ratio(self.annualisation)


# Outcome codes index the running totals: 2 * y_true + y_pred.
_TN, _FP, _FN, _TP = 0, 1, 2, 3


class CountWindow(_Metrics):
    """The last ``size`` outcomes, with O(1) updates.

    Parameters
    ----------
    size
        Number of outcomes kept.
    annualisation
        Periods per year for :attr:`sharpe` (1 = per-period ratio).

    Examples
    --------
    >>> w = CountWindow(size=2).update(1, 1, ret=0.5).update(1, 0, ret=-0.5)
    >>> w.accuracy, w.recall
    (0.5, 0.5)
    """

    def __init__(self, size: int, *, annualisation: float = 1.0) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = int(size)
        self.annualisation = float(annualisation)
        self._codes = [0] * self.size
        self._rets = [0.0] * self.size
        self._tot = [0, 0, 0, 0]
        self._ret_sum = 0.0
        self._ret_sq = 0.0
        self._i = 0
        self._n = 0
        self._since_resum = 0

    def update(self, y_true: Any, y_pred: Any, ret: float = 0.0, t: Any = None) -> CountWindow:
        """Add one outcome, dropping the oldest once full; ``t`` is ignored."""
        code = 2 * bool(y_true) + bool(y_pred)
        ret = float(ret)
        i = self._i
        if self._n == self.size:
            self._tot[self._codes[i]] -= 1
            old = self._rets[i]
            self._ret_sum -= old
            self._ret_sq -= old * old
        else:
            self._n += 1
        self._codes[i] = code
        self._rets[i] = ret
        self._tot[code] += 1
        self._ret_sum += ret
        self._ret_sq += ret * ret
        self._i = i + 1 if i + 1 < self.size else 0
        # Adding and subtracting floats forever accumulates rounding error;
        # an exact re-sum once per `size` updates keeps it bounded at O(1) amortised.
        self._since_resum += 1
        if self._since_resum >= self.size:
            self._resum()
        return self

    def _resum(self) -> None:
        rets = self._rets[: self._n] if self._n < self.size else self._rets
        self._ret_sum = math.fsum(rets)
        self._ret_sq = math.fsum(r * r for r in rets)
        self._since_resum = 0

    @property
    def counts(self) -> Counts:
        tn, fp, fn, tp = self._tot
        return Counts(self._n, tp, fp, tn, fn, self._ret_sum, self._ret_sq)

    @property
    def n(self) -> int:
        return self._n

    @property
    def hits(self) -> int:
        """Correct predictions in the window."""
        return self._tot[_TP] + self._tot[_TN]

    @property
    def is_full(self) -> bool:
        return self._n == self.size


class TimeWindow(_Metrics):
    """The outcomes of the last ``span`` seconds, bucketed.

    Time is split into buckets of ``bucket`` seconds (bucket ``k`` holds
    ``k * bucket <= t < (k + 1) * bucket``); the window is the newest
    ``ceil(span / bucket)`` buckets up to the latest time seen, so its real
    span lies between ``span - bucket`` and ``span``. Outcomes older than the
    window are dropped and counted in :attr:`late`.

    Parameters
    ----------
    span
        Window length in seconds.
    bucket
        Bucket width in seconds (the resolution of expiry).
    annualisation
        Periods per year for :attr:`sharpe`.
    clock
        Seconds source used when ``update`` gets no ``t``; defaults to
        :func:`retrain.core.clock.monotonic`. Inject a fake one in tests.

    Examples
    --------
    >>> w = TimeWindow(span=60, bucket=1)
    >>> _ = w.update(1, 1, t=0.0).update(0, 1, t=30.0)
    >>> w.n, w.advance(75.0).n
    (2, 1)
    """

    def __init__(
        self,
        span: float,
        bucket: float = 1.0,
        *,
        annualisation: float = 1.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if span <= 0 or bucket <= 0:
            raise ValueError(f"span and bucket must be positive, got span={span}, bucket={bucket}")
        self.span = float(span)
        self.bucket = float(bucket)
        self.annualisation = float(annualisation)
        self._clock = clock or monotonic
        self.n_buckets = max(1, math.ceil(self.span / self.bucket - 1e-9))
        nb = self.n_buckets
        # Parallel lists: one slot per bucket, indexed by bucket number mod nb.
        self._key = [None] * nb  # type: list[int | None]
        self._tot_b = [[0, 0, 0, 0] for _ in range(nb)]
        self._rs_b = [0.0] * nb
        self._rq_b = [0.0] * nb
        self._tot = [0, 0, 0, 0]
        self._ret_sum = 0.0
        self._ret_sq = 0.0
        self._head: int | None = None
        self._evictions = 0
        self.late = 0

    def _seconds(self, t: Any) -> float:
        if t is None:
            return float(self._clock())
        if isinstance(t, datetime):
            return t.timestamp()
        return float(t)

    def advance(self, t: Any) -> TimeWindow:
        """Move the window's end to ``t`` (seconds or datetime), expiring old buckets."""
        self._roll(math.floor(self._seconds(t) / self.bucket))
        return self

    def _roll(self, k: int) -> None:
        head = self._head
        if head is not None and k <= head:
            return
        nb = self.n_buckets
        if head is None or k - head >= nb:
            for s in range(nb):
                self._clear(s)
        else:
            for b in range(head + 1, k + 1):
                self._clear(b % nb)
        self._head = k

    def _clear(self, s: int) -> None:
        if self._key[s] is None:
            return
        tb = self._tot_b[s]
        for j in range(4):
            self._tot[j] -= tb[j]
            tb[j] = 0
        self._ret_sum -= self._rs_b[s]
        self._ret_sq -= self._rq_b[s]
        self._rs_b[s] = self._rq_b[s] = 0.0
        self._key[s] = None
        self._evictions += 1
        if self._evictions >= self.n_buckets:
            # Bound the rounding error of subtract-on-expiry (amortised O(1)).
            self._ret_sum = math.fsum(self._rs_b)
            self._ret_sq = math.fsum(self._rq_b)
            self._evictions = 0

    def update(self, y_true: Any, y_pred: Any, ret: float = 0.0, t: Any = None) -> TimeWindow:
        """Add one outcome observed at ``t`` (seconds or datetime; default: the clock)."""
        k = math.floor(self._seconds(t) / self.bucket)
        self._roll(k)
        assert self._head is not None
        if k <= self._head - self.n_buckets:
            self.late += 1
            return self
        s = k % self.n_buckets
        self._key[s] = k
        code = 2 * bool(y_true) + bool(y_pred)
        ret = float(ret)
        self._tot_b[s][code] += 1
        self._tot[code] += 1
        self._rs_b[s] += ret
        self._rq_b[s] += ret * ret
        self._ret_sum += ret
        self._ret_sq += ret * ret
        return self

    @property
    def counts(self) -> Counts:
        tn, fp, fn, tp = self._tot
        return Counts(tn + fp + fn + tp, tp, fp, tn, fn, self._ret_sum, self._ret_sq)

    def buckets(self) -> list[tuple[float, Counts]]:
        """Non-empty buckets, oldest first, as ``(bucket start seconds, Counts)``."""
        out = []
        for s, k in enumerate(self._key):
            if k is None:
                continue
            tn, fp, fn, tp = self._tot_b[s]
            out.append((k * self.bucket, Counts(tn + fp + fn + tp, tp, fp, tn, fn, self._rs_b[s], self._rq_b[s])))
        out.sort(key=lambda x: x[0])
        return out
