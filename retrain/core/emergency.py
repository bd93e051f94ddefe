"""Emergency detection (ADAPT-012): a sudden collapse that justifies skipping approval.

A per-bucket series (per-minute or per-5-minute accuracy, mean return, ...) is
compared with its own recent history::

    z = (mean(history) - latest) / sigma        (bad direction 'down'; 'up' flips it)

and the firing's severity is set by how far and how fast it fell:

* **how far**: ``z >= 3`` LOW, ``>= 4`` MEDIUM, ``>= 5`` HIGH, ``>= 6`` CRITICAL
  (``levels``, configurable). Under Gaussian noise a single check crosses 3
  sigma with probability 0.13 %, 4 sigma 3e-5, 5 sigma 3e-7, 6 sigma 1e-9.
* **how fast**: one level more (at most CRITICAL) when the last ``consecutive``
  buckets (default 3) are all beyond the first level, or when the latest
  bucket fell by ``jump_sigma`` (default 4) sigma from the bucket before it.

At one check per 5-minute bucket, 3 sigma alone would fire about once in 2.5
days on pure noise: LOW emergencies are for paging, not for bypassing
approvals; a policy that bypasses should look at the severity.

*Which sigma.* A bucket's value is noisy in two ways: the process moves from
bucket to bucket (variance ``tau^2``), and a bucket of ``n`` outcomes measures
its accuracy with binomial variance ``p (1 - p) / n``. When the series comes
as :class:`~retrain.core.windows.Counts` the history's variance is split into the
two (``tau^2 = max(0, var(history) - mean(p(1-p)/n_i))``) and the latest
bucket is judged by its own size: ``sigma^2 = tau^2 + p (1 - p) / n_latest``,
so a 10-outcome bucket at 0.3 is not a 6 sigma event just because the history
had 1,000 outcomes a bucket. Mean returns are treated the same way with the
pooled return variance. ``robust=True`` uses the median and 1.4826 * MAD.

*Guards.* Fewer than ``min_history`` usable buckets, a latest bucket with fewer
than ``min_samples`` outcomes, or a plain float history with zero variance
(and no ``min_std``) give no firing: there is no scale to measure a surprise
against.

>>> hist = [0.60, 0.61, 0.59, 0.60, 0.62, 0.58, 0.60, 0.61, 0.59, 0.60]
>>> detect_emergency(hist, 0.50).severity.value
'CRITICAL'
>>> detect_emergency(hist, 0.59) is None
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import numpy as np

from retrain.core.clock import utc
from retrain.core.domain import Severity, TriggerKind
from retrain.core.triggers import TriggerFiring
from retrain.core.windows import Counts

__all__ = ["EmergencyConfig", "detect_emergency", "detect_emergency_from_buckets", "detect_emergency_from_arrays",
           "EmergencyEpisode"]

_LEVELS = (Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)
_MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class EmergencyConfig:
    """Settings of the emergency detector; see the module docstring.

    Parameters
    ----------
    levels
        z at which LOW, MEDIUM, HIGH and CRITICAL start.
    direction
        'down' when lower is worse (accuracy, returns), 'up' otherwise.
    metric
        For :class:`Counts` input: 'accuracy' or 'mean_return'.
    robust
        Median and MAD instead of mean and standard deviation.
    min_history
        Usable history buckets needed.
    min_samples
        Outcomes needed in the latest bucket (Counts input).
    consecutive
        Trailing buckets all beyond ``levels[0]`` that escalate one level.
    jump_sigma
        Fall from the previous bucket, in sigma, that escalates one level.
    min_std
        Floor of sigma, in the metric's units.
    history_buckets, bucket_minutes
        Used by :func:`detect_emergency_from_buckets` to group minute buckets.
    """

    levels: tuple[float, float, float, float] = (3.0, 4.0, 5.0, 6.0)
    direction: Literal["down", "up"] = "down"
    metric: str = "accuracy"
    robust: bool = False
    min_history: int = 10
    min_samples: int = 20
    consecutive: int = 3
    jump_sigma: float = 4.0
    min_std: float = 0.0
    history_buckets: int = 120
    bucket_minutes: int = 5

    def __post_init__(self) -> None:
        if len(self.levels) != 4 or list(self.levels) != sorted(self.levels) or self.levels[0] <= 0:
            raise ValueError(f"levels must be 4 increasing positive numbers, got {self.levels}")
        if self.direction not in ("down", "up"):
            raise ValueError(f"direction must be 'down' or 'up', got {self.direction!r}")
        if self.metric not in ("accuracy", "mean_return"):
            raise ValueError(f"metric must be 'accuracy' or 'mean_return', got {self.metric!r}")
        if self.min_history < 2 or self.consecutive < 1 or self.min_std < 0:
            raise ValueError("min_history must be >= 2, consecutive >= 1, min_std >= 0")

    @classmethod
    def from_sigma(cls, sigma: float, **kw: Any) -> EmergencyConfig:
        """Levels at sigma, sigma + 1, sigma + 2, sigma + 3."""
        return cls(levels=(sigma, sigma + 1, sigma + 2, sigma + 3), **kw)


def _as_config(cfg: Any) -> EmergencyConfig:
    # The settings object of retrain.config (sigma, history_buckets, bucket_minutes) is accepted as is.
    if cfg is None:
        return EmergencyConfig()
    if isinstance(cfg, EmergencyConfig):
        return cfg
    kw = {k: getattr(cfg, k) for k in ("history_buckets", "bucket_minutes") if hasattr(cfg, k)}
    return EmergencyConfig.from_sigma(float(getattr(cfg, "sigma", 3.0)), **kw)


@dataclass(frozen=True)
class _Series:
    values: np.ndarray
    # Sampling variance of each bucket's value; None for a plain float series.
    sampling_var: np.ndarray | None
    n: np.ndarray | None


def _series(items: Sequence[float | Counts], cfg: EmergencyConfig, pooled: tuple[float, float] | None) -> _Series:
    if not items:
        return _Series(np.empty(0), None, None)
    if not isinstance(items[0], Counts):
        return _Series(np.asarray(items, dtype=float), None, None)
    # Both floats or both Counts: detect_emergency checks it.
    cs = [c for c in cast("Sequence[Counts]", items) if c.n > 0]
    n = np.array([c.n for c in cs], dtype=np.float64)
    if cfg.metric == "accuracy":
        values = np.array([c.accuracy for c in cs])
        p = pooled[0] if pooled else 0.5
        var = p * (1 - p) / n
    else:
        values = np.array([c.mean_return for c in cs])
        v = pooled[1] if pooled else 0.0
        var = v / n
    return _Series(values, var, n)


def _pooled(items: Sequence[Counts]) -> tuple[float, float]:
    # Field by field: adding Counts objects one by one costs more than the whole test.
    total = Counts(*(sum(getattr(c, f) for c in items) for f in ("n", "tp", "fp", "tn", "fn", "ret_sum",
                                                                  "ret_sq_sum")))
    # Add-one smoothing keeps p(1-p) > 0 for a history that was always right.
    p = (total.hits + 1) / (total.n + 2)
    sd = total.std_return
    return p, (0.0 if math.isnan(sd) else sd * sd)


def _as_list(x: Any) -> list[Any]:
    if isinstance(x, (Counts, int, float, np.floating, np.integer)):
        return [x]
    return list(x)


def detect_emergency(
    history: Sequence[float] | Sequence[Counts],
    recent: float | Counts | Sequence[float] | Sequence[Counts],
    cfg: EmergencyConfig | Any = None,
) -> TriggerFiring | None:
    """Judge the latest bucket(s) against the history; a firing with a severity, or None.

    ``history`` is the reference buckets, oldest first; ``recent`` is the
    latest bucket or the few latest buckets (latest last), not part of the
    history. Both are floats or both :class:`Counts`.
    """
    cfg = _as_config(cfg)
    recent_l = _as_list(recent)
    hist_l: list[Any] = list(history)
    if not recent_l:
        return None
    with_counts = isinstance(recent_l[-1], Counts)
    if with_counts != (not hist_l or isinstance(hist_l[0], Counts)) and hist_l:
        raise TypeError("history and recent must both be floats or both Counts")
    if with_counts and recent_l[-1].n < cfg.min_samples:
        return None
    pooled = _pooled(hist_l) if with_counts else None
    hist = _series(hist_l, cfg, pooled)
    rec = _series(recent_l, cfg, pooled)
    if hist.values.size < cfg.min_history or rec.values.size == 0:
        return None
    finite = np.isfinite(hist.values)
    values = hist.values[finite]
    if values.size < cfg.min_history or not np.isfinite(rec.values[-1]):
        return None

    if cfg.robust:
        centre = float(np.median(values))
        spread = _MAD_TO_SD * float(np.median(np.abs(values - centre)))
    else:
        centre = float(values.mean())
        spread = float(values.std(ddof=1))
    if spread <= 1e-12 * max(1.0, abs(centre)):
        spread = 0.0  # a constant series, up to rounding
    if with_counts and cfg.metric == "accuracy" and not cfg.robust:
        centre = pooled[0] if pooled else centre  # weighted by bucket size
    if hist.sampling_var is not None:
        tau2 = max(0.0, spread * spread - float(hist.sampling_var[finite].mean()))
        assert rec.sampling_var is not None  # history of Counts, so recent is Counts too (checked above)
        sig = np.sqrt(tau2 + rec.sampling_var)
    else:
        tau2 = spread * spread
        sig = np.full(rec.values.size, spread)
    sig = np.maximum(sig, cfg.min_std)
    if sig[-1] <= 0:
        return None
    sign = 1.0 if cfg.direction == "down" else -1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = sign * (centre - rec.values) / sig
    z_last = float(z[-1])
    if not z_last >= cfg.levels[0]:
        return None

    level = max(i for i, t in enumerate(cfg.levels) if z_last >= t)
    # How fast: several bad buckets in a row, or a cliff since the previous bucket.
    run = 0
    for zi in z[::-1]:
        if zi >= cfg.levels[0]:
            run += 1
        else:
            break
    prev = float(rec.values[-2]) if rec.values.size > 1 else float(values[-1])
    jump = sign * (prev - float(rec.values[-1])) / float(sig[-1])
    escalations = []
    if run >= cfg.consecutive:
        escalations.append(f"{run} bad buckets in a row")
    if jump >= cfg.jump_sigma:
        escalations.append(f"a fall of {jump:.1f} sigma since the previous bucket")
    if escalations:
        level = min(level + 1, len(_LEVELS) - 1)
    severity = _LEVELS[level]

    what = cfg.metric.replace("_", " ") if with_counts else "the metric"
    n_part = f" (n={int(rec.n[-1])})" if rec.n is not None else ""
    reason = (
        f"{what[0].upper() + what[1:]} {float(rec.values[-1]):.4g} in the latest bucket{n_part} is "
        f"{z_last:.1f} sigma {'below' if sign > 0 else 'above'} its recent "
        f"{'median' if cfg.robust else 'mean'} {centre:.4g} (sigma {float(sig[-1]):.3g} over {values.size} buckets)"
        + (f", escalated for {' and '.join(escalations)}" if escalations else "")
        + f": {severity.value}."
    )
    evidence = {
        "metric": cfg.metric if with_counts else "value",
        "direction": cfg.direction,
        "latest": float(rec.values[-1]),
        "n_latest": int(rec.n[-1]) if rec.n is not None else None,
        "z": round(z_last, 4),
        "z_recent": [round(float(x), 4) if np.isfinite(x) else None for x in z],
        "centre": centre,
        "robust": cfg.robust,
        "sigma": float(sig[-1]),
        "between_bucket_sd": math.sqrt(tau2),
        "history_sd": spread,
        "history_buckets": int(values.size),
        "levels": dict(zip((s.value for s in _LEVELS), cfg.levels)),
        "consecutive_bad": run,
        "jump_sigma": round(jump, 4),
        "escalated": bool(escalations),
    }
    return TriggerFiring(TriggerKind.EMERGENCY, reason, evidence, severity)


def detect_emergency_from_buckets(
    counts: Sequence[Counts],
    starts: Sequence[datetime],
    now: datetime,
    cfg: EmergencyConfig | Any = None,
) -> TriggerFiring | None:
    """Group minute buckets into ``bucket_minutes`` buckets ending at ``now`` and check accuracy and mean return.

    ``counts[i]`` holds the outcomes of the minute starting at ``starts[i]``.
    Bucket 0 holds the minutes that started in ``(now - width, now]``; the
    ``consecutive`` newest buckets are the recent ones, the up to
    ``history_buckets`` before them the history. Returns the more severe of the
    two firings (accuracy first on a tie), or None.
    """
    matrix = np.array([(c.n, c.tp, c.fp, c.tn, c.fn, c.ret_sum, c.ret_sq_sum) for c in counts],
                      dtype=float).reshape(-1, 7)
    seconds = np.array([utc(t).timestamp() for t in starts], dtype=float)
    return detect_emergency_from_arrays(seconds, matrix, now, cfg)


def detect_emergency_from_arrays(
    starts_s: np.ndarray,
    matrix: np.ndarray,
    now: datetime,
    cfg: EmergencyConfig | Any = None,
) -> TriggerFiring | None:
    """:func:`detect_emergency_from_buckets` on arrays: minute starts in epoch seconds, and one row
    ``(n, tp, fp, tn, fn, ret_sum, ret_sq_sum)`` per minute (the sweep reads them so)."""
    cfg = _as_config(cfg)
    width = cfg.bucket_minutes * 60.0
    n_buckets = cfg.history_buckets + cfg.consecutive
    age = utc(now).timestamp() - np.asarray(starts_s, dtype=float)
    k = np.floor(age / width).astype(np.int64)
    keep = (age >= 0) & (k < n_buckets)
    grouped = np.zeros((n_buckets, 7))
    np.add.at(grouped, k[keep], np.asarray(matrix, dtype=float).reshape(-1, 7)[keep])
    grouped = grouped[::-1]  # oldest first
    if grouped[-1, 0] == 0:
        return None  # nothing in the latest bucket: nothing to judge

    def as_counts(rows: np.ndarray) -> list[Counts]:
        return [Counts(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), float(r[5]), float(r[6]))
                for r in rows if r[0] > 0]

    history, recent = as_counts(grouped[: cfg.history_buckets]), as_counts(grouped[cfg.history_buckets :])
    best = None
    for metric in ("accuracy", "mean_return"):
        firing = detect_emergency(history, recent, _with_metric(cfg, metric))
        if firing is not None and (best is None or _rank(firing) > _rank(best)):
            best = firing
    return best


def _with_metric(cfg: EmergencyConfig, metric: str) -> EmergencyConfig:
    return replace(cfg, metric=metric)


def _rank(f: TriggerFiring) -> int:
    return _LEVELS.index(f.severity) if f.severity else -1


@dataclass(frozen=True)
class EmergencyEpisode:
    """One emergency of a model: firings no more than ``gap`` apart, answered once.

    The sweep keeps one per model (``controls`` row ``emergency:MODEL``) and acts on
    it: an episode aborts the rollouts in progress that are not its own retraining's,
    rolls production back to ``previous`` at most once, and starts one retraining (its
    request's run); a firing of the same episode after that is held back. A firing
    more than ``gap`` after the last one begins a new episode.

    >>> from datetime import timezone
    >>> t = datetime(2026, 1, 5, tzinfo=timezone.utc)
    >>> e = EmergencyEpisode.observe(None, t, Severity.HIGH, "1.2.0", timedelta(minutes=60))
    >>> e = EmergencyEpisode.observe(e, t + timedelta(minutes=5), Severity.CRITICAL, "1.2.0", timedelta(minutes=60))
    >>> e.started_at == t, e.severity
    (True, 'CRITICAL')
    >>> EmergencyEpisode.observe(e, t + timedelta(hours=2), Severity.LOW, "1.2.0", timedelta(minutes=60)).started_at > t
    True
    """

    started_at: datetime
    last_fired_at: datetime
    severity: str
    production: str
    request_id: str | None = None
    rolled_back: dict[str, Any] | None = None
    aborted: tuple[str, ...] = ()

    @classmethod
    def observe(cls, episode: EmergencyEpisode | None, now: datetime, severity: Severity, production: str,
                gap: timedelta) -> EmergencyEpisode:
        """The episode a firing at ``now`` belongs to: ``episode`` continued, or a new one."""
        if episode is None or now - episode.last_fired_at > gap or now < episode.started_at:
            return cls(now, now, severity.value, production)
        worst = max(Severity(episode.severity), severity, key=_LEVELS.index)
        return replace(episode, last_fired_at=max(now, episode.last_fired_at), severity=worst.value)

    def to_json(self) -> dict[str, Any]:
        return {"started_at": self.started_at.isoformat(), "last_fired_at": self.last_fired_at.isoformat(),
                "severity": self.severity, "production": self.production, "request_id": self.request_id,
                "rolled_back": self.rolled_back, "aborted": list(self.aborted)}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> EmergencyEpisode | None:
        if not d:
            return None
        return cls(datetime.fromisoformat(d["started_at"]), datetime.fromisoformat(d["last_fired_at"]),
                   d["severity"], d["production"], d.get("request_id"), d.get("rolled_back"),
                   tuple(d.get("aborted") or ()))
