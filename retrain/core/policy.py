"""The retraining decision (ADAPT-013): cooldowns, limits, budgets, ROI, approval.

:func:`decide` is a pure function of ``(request, state, policy, now)``: no I/O,
no clock, no randomness. The task that calls it loads a :class:`StateSnapshot`
from the database, and persists the returned :class:`~retrain.core.domain.Decision`
as the audit record. Every rule is evaluated and listed, with its value and its
limit, even when an earlier one already failed, so the audit trail says
everything that stood in the way, not only the first thing.

Rules, in the order they are listed
-----------------------------------
=====================  ========================================  =========  ==========================
rule                   fails when                                outcome    bypassed by
=====================  ========================================  =========  ==========================
paused                 the model or all retraining is paused     reject     (nothing)
coalesce               a run of the model is queued or running   coalesced  (nothing)
approval               model deployed < ``approval_days`` ago    pending    emergency; ``approved_by``
cooldown               last start < ``cooldown_hours`` ago       defer      emergency
daily_runs             >= ``max_runs_per_model_per_day``         defer      emergency
global_daily_runs      >= ``max_runs_global_per_day`` today      defer      emergency
offpeak                SCHEDULE request outside the window       defer      emergency (others: n/a)
resources              training node short of memory/CPU/disk    defer      (nothing)
budget_override        override asked without a reason           reject     (nothing)
budget_daily           spend today + estimate > daily cap        defer (1)  emergency (2), override
budget_monthly         spend month + estimate > monthly cap      defer (1)  override; emergency only if
                                                                            ``emergency_bypasses_monthly_cap``
model_budget_daily     same, this model's own daily cap          defer (1)  emergency (2), override
model_budget_monthly   same, this model's own monthly cap        defer (1)  as budget_monthly
roi                    benefit / estimate < ``min_roi``          reject     override; CRITICAL emergency;
                                                                            below the floor too long (3)
=====================  ========================================  =========  ==========================

(1) A budget that is only exhausted *for now* defers to when it resets (next
UTC midnight, first of next month 00:00 UTC). A run whose estimate alone is
larger than the cap can never fit, so that is a reject.
(2) The requirement pairs "emergencies bypass the daily limit" with "never the
monthly cap"; we read the daily limit as both the run count and the daily
spend (``emergency_bypasses_daily_budget``, default True).
(3) ROI yields, still subject to every other rule, to a CRITICAL emergency and
to a model known to be below its accuracy floor for ``max_hours_below_floor_on_roi``
(see the value model); the ``roi`` rule says which, and ``detail["roi_yields_to"]``.

A bypassed rule is still evaluated: ``passed`` says what it would have said,
``bypassed=True`` says it did not count. ``override_budget`` is honoured only
with a non-empty ``evidence["override_reason"]``; without one the override is
ignored *and* the request is rejected, so that a missing reason is loud.

Verdict precedence (first match wins)
-------------------------------------
==  ==================  ===========================================================
1   COALESCED           an active run exists: the request joins it (run id in
                        ``detail["coalesced_with"]``); nothing new is started.
2   REJECT              any failed reject-rule: paused, budget_override,
                        roi, or a budget the estimate can never fit.
3   DEFER               any failed defer-rule; ``defer_until`` is the latest
                        ``retry_at`` among them, moved to the next opening of
                        the off-peak window for SCHEDULE requests when that
                        time falls outside it.
4   PENDING_APPROVAL    approval needed and not bypassed.
5   APPROVE             everything passed or was bypassed.
==  ==================  ===========================================================

Paused is a reject (reason ``paused``), not a defer: a paused model's requests
must not pile up and all fire on resume; triggers fire again after resume if
the model still needs it. Emergencies do not bypass a pause, since a pause is
the operators' administrative control over all retraining.

Windows
-------
* Per-model run limit: a rolling 24 h window by default (``daily_window=
  "rolling"``), which stops the 2-at-23:59-then-2-at-00:01 burst a calendar
  day allows and gives an exact retry time (the oldest counted start + 24 h).
  ``"utc_day"`` counts the current UTC calendar day instead.
* The global run cap and all spend figures are per UTC calendar day / month,
  because the snapshot carries them as totals.
* Off-peak: local wall time in ``[offpeak_start, offpeak_end)`` in
  ``timezone``; the window may wrap midnight. On a spring-forward day a start
  inside the skipped hour opens at the transition instant; on a fall-back day
  an ambiguous start opens at its first occurrence.

Value model (ROI)
-----------------
::

    gap_points      = evidence["expected_recovery_points"]              if given
                    = (target - current_accuracy) x 100                 if current is given
                      where target = max(baseline_accuracy,             (fractions; values > 1
                                         accuracy_floor)                 are taken as percent)
                    = policy.default_gap_points                         otherwise
    gap_points      = clamp(gap_points, 0, policy.max_gap_points)
    recovery_points = gap_points x policy.recovery_factor
    horizon_days    = max(policy.value_horizon_days, state.lookback_days)
    predictions     = state.predictions_per_day x horizon_days
    mean_abs_return = sqrt(2 / pi) x state.return_rms     (E|r| of a normal return with that RMS)
    value_per_correct_usd
                    = 2 x policy.notional_usd x mean_abs_return         when outcomes carry returns
                    = 100 x policy.value_per_accuracy_point_usd         otherwise
    benefit_usd     = value_per_correct_usd x recovery_points / 100 x predictions
    roi             = benefit_usd / state.estimated_cost_usd     (>= min_roi to proceed)

Every rate is valued over the time a retrained model is expected to serve:
``value_horizon_days`` (7), or the model's training window (``lookback_hours``)
when that is longer, since a model that learns from a year of daily history is
not replaced within a week and its gain lasts about as long as what it learned
from. A model serving one prediction a day and one serving 5,000 a second are
so compared like with like; ``state.predictions_per_day`` is what the model serves, labelled or
not (:func:`serving_rate`). A prediction turned from wrong to right gains its
return instead of losing it: with returns, one correct prediction is worth
``2 x notional x mean |return|``, where ``notional_usd`` is the position one
prediction trades. Without returns it is worth the configured
``100 x value_per_accuracy_point_usd`` (one accuracy point on one prediction,
the figure the training's opportunity cost uses too). The target is the
version's validated baseline, or the accuracy floor (the requirement's 55 %)
when that is higher: a model serving under the floor is worth bringing back to
it even when its own baseline was poor. ``recovery_factor`` discounts the gap
for what a retraining is expected to win back.

The floor rule: a model is *below its floor* when the upper
``floor_confidence`` bound of its live accuracy (normal approximation on the
``measured_on`` or ``n`` outcomes of the evidence; the point estimate when the
count is unknown) is below ``accuracy_floor``, and *not* below it when the
point estimate is at or above it. ``state.below_floor_since`` is the first
decision that found it below since its last retraining and since a decision last
found it not below. Once it has been below for ``max_hours_below_floor_on_roi``
(72 h), a failed ROI yields; before that the ``roi`` rule says how long is left.
Inputs and result are in the ``roi`` rule and in ``Decision.detail["value_model"]``.

Example
-------
>>> from datetime import datetime, timezone
>>> from retrain.core.domain import RetrainRequest, TriggerKind
>>> now = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
>>> req = RetrainRequest("r1", "direction", TriggerKind.PERFORMANCE, now, "accuracy drop",
...                      evidence={"baseline_accuracy": 0.60, "current_accuracy": 0.54})
>>> state = StateSnapshot("direction", deployed_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
...                       estimated_cost_usd=2.0, predictions_per_day=1e7)
>>> decide(req, state, Policy(), now).verdict.value
'approve'
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time, timedelta, timezone
from numbers import Real
from statistics import NormalDist
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retrain.core.clock import time_zone, utc
from retrain.core.domain import Decision, RetrainRequest, RuleResult, Severity, TriggerKind, Verdict
from retrain.core.errors import ConfigError

__all__ = [
    "Policy",
    "StateSnapshot",
    "ResourceReading",
    "decide",
    "value_model",
    "serving_rate",
    "format_usd",
    "RULES",
]

RULES: tuple[str, ...] = (
    "paused",
    "coalesce",
    "approval",
    "cooldown",
    "daily_runs",
    "global_daily_runs",
    "offpeak",
    "resources",
    "budget_override",
    "budget_daily",
    "budget_monthly",
    "model_budget_daily",
    "model_budget_monthly",
    "roi",
)

_UTC = timezone.utc
_DAY = timedelta(days=1)
_EMERGENCY = TriggerKind.EMERGENCY
_SCHEDULE = TriggerKind.SCHEDULE
_CRITICAL = Severity.CRITICAL
# E|r| of a normal return with this RMS: the buckets keep the sum of squared returns, not of |r|.
_ABS_PER_RMS = math.sqrt(2.0 / math.pi)
_OPEN_CACHE_MAX = 256

# Results are immutable, so the common passing outcomes that depend on no
# input are built once and shared: fewer allocations on the hot path.
_RR = RuleResult
_NOT_PAUSED = RuleResult("paused", True, False, False, "not paused")
_NO_ACTIVE = RuleResult("coalesce", True, None, None, "no active run")
_NO_READING = RuleResult("resources", True, None, None, "no reading")
_NO_OVERRIDE = RuleResult("budget_override", True, False, None, "not requested")


@dataclass(frozen=True, slots=True)
class ResourceReading:
    """Free capacity on the training node, as :func:`retrain.core.costs.read_resources` reads it."""

    free_memory_mb: float
    cpu_load_pct: float
    free_disk_mb: float


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """What the decision needs to know about the world, loaded by the task in one go.

    ``recent_run_starts`` are this model's retrainings started in the last ~31
    days (cancelled ones excluded); they are normalised to sorted UTC here so
    that :func:`decide` can bisect them. Spend figures are in USD and include
    the reservations of approved runs that have not reported their cost yet.
    """

    model: str
    deployed_at: datetime | None = None
    recent_run_starts: tuple[datetime, ...] = ()
    runs_today_global: int = 0
    active_run_id: str | None = None
    spend_today_usd: float = 0.0
    spend_month_usd: float = 0.0
    model_spend_today_usd: float = 0.0
    model_spend_month_usd: float = 0.0
    estimated_cost_usd: float = 0.0
    # What the model serves, labelled or not (serving_rate), and how that was measured.
    predictions_per_day: float = 0.0
    predictions_source: str = ""
    # The model's training window (lookback_hours / 24): how long a retrained model is expected
    # to serve when longer than policy.value_horizon_days (see the module docstring).
    lookback_days: float = 0.0
    # RMS of the outcomes' returns and how many labelled outcomes it is measured on;
    # None when the outcomes carry no returns.
    return_rms: float | None = None
    returns_measured_on: int = 0
    # The first decision that found the model below its accuracy floor, since its last
    # retraining and since a decision last found it not below (see the module docstring).
    below_floor_since: datetime | None = None
    paused: bool = False
    globally_paused: bool = False
    # False for a model's first training: nothing serves yet, so ROI has nothing to recover.
    has_production: bool = True
    resources: ResourceReading | None = None

    def __post_init__(self) -> None:
        starts = self.recent_run_starts
        if starts:
            object.__setattr__(self, "recent_run_starts", tuple(sorted(utc(s) for s in starts)))
        if self.deployed_at is not None and self.deployed_at.tzinfo is not _UTC:
            object.__setattr__(self, "deployed_at", utc(self.deployed_at))
        if self.below_floor_since is not None and self.below_floor_since.tzinfo is not _UTC:
            object.__setattr__(self, "below_floor_since", utc(self.below_floor_since))


def _parse_time(name: str, v: time | str) -> time:
    if isinstance(v, time):
        return v
    try:
        return time.fromisoformat(v)
    except (TypeError, ValueError):
        raise ConfigError(f"policy.{name}: expected HH:MM, got {v!r}") from None


_FINITE = {"allow_inf_nan": False}
_NonNegative = Annotated[float, Field(ge=0, **_FINITE)]


class _PolicyFields(BaseModel):
    """What each field of :class:`Policy` may hold: the configuration is validated by pydantic,
    like the rest of the model file; Policy then precomputes what :func:`decide` reads."""

    model_config = ConfigDict(extra="forbid", strict=False)

    cooldown_hours: _NonNegative
    max_runs_per_model_per_day: Annotated[int, Field(ge=1, strict=True)]
    daily_window: Literal["rolling", "utc_day"]
    max_runs_global_per_day: Annotated[int, Field(ge=1, strict=True)] | None
    daily_budget_usd: _NonNegative | None
    monthly_budget_usd: _NonNegative | None
    model_daily_budget_usd: _NonNegative | None
    model_monthly_budget_usd: _NonNegative | None
    min_roi: _NonNegative
    value_per_accuracy_point_usd: _NonNegative
    notional_usd: _NonNegative
    value_horizon_days: _NonNegative
    max_hours_below_floor_on_roi: _NonNegative | None
    floor_confidence: Annotated[float, Field(ge=0.5, lt=1.0)]
    recovery_factor: Annotated[float, Field(ge=0.0, le=1.0)]
    default_gap_points: _NonNegative
    max_gap_points: _NonNegative
    offpeak_start: time | str | None
    offpeak_end: time | str | None
    timezone: str
    min_free_memory_mb: _NonNegative
    max_cpu_load_pct: Annotated[float, Field(gt=0.0, le=100.0 * 1024, **_FINITE)]
    min_free_disk_mb: _NonNegative
    resource_retry_minutes: _NonNegative
    approval_days: _NonNegative
    emergency_bypasses_monthly_cap: bool
    emergency_bypasses_daily_budget: bool


def _validate(policy: Policy) -> None:
    """Check every field with :class:`_PolicyFields`; the first error is a ConfigError naming its field."""
    values = {f.name: getattr(policy, f.name) for f in fields(policy) if f.init}
    try:
        _PolicyFields.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(x) for x in err["loc"][:1]) or "?"
        raise ConfigError(f"policy.{name}: {err['msg']}, got {values.get(name)!r}") from None


@dataclass(frozen=True, slots=True)
class Policy:
    """The decision's parameters; every default comes from the requirement.

    Its fields are validated once, by pydantic (:class:`_PolicyFields`), and an error is a
    :class:`~retrain.core.errors.ConfigError` naming the field. The object itself is a
    frozen dataclass that holds the validated values and what :func:`decide` derives
    from them (timedeltas, the time zone, the window in seconds, labels), so that a
    decision pays neither validation nor pydantic's attribute machinery.
    """

    cooldown_hours: float = 6.0
    max_runs_per_model_per_day: int = 2
    daily_window: Literal["rolling", "utc_day"] = "rolling"
    max_runs_global_per_day: int | None = None
    daily_budget_usd: float = 10.0
    monthly_budget_usd: float = 100.0
    model_daily_budget_usd: float | None = None
    model_monthly_budget_usd: float | None = None
    min_roi: float = 1.5
    # Without returns: one accuracy point on one prediction ($0.001 a correct prediction: set it
    # to what a correct prediction is worth to you).
    value_per_accuracy_point_usd: float = 1e-5
    # With returns: the position one prediction trades.
    notional_usd: float = 1000.0
    # Every rate is valued over the same time: a week of the retrained model's service.
    value_horizon_days: float = 7.0
    # A model below its floor this long yields a failed ROI (None: never).
    max_hours_below_floor_on_roi: float | None = 72.0
    floor_confidence: float = 0.95
    recovery_factor: float = 0.5
    default_gap_points: float = 2.0
    max_gap_points: float = 10.0
    offpeak_start: time | str | None = time(1, 0)
    offpeak_end: time | str | None = time(5, 0)
    timezone: str = "UTC"
    min_free_memory_mb: float = 1024.0
    # The 1-minute load average per CPU, in percent (retrain.core.costs.read_resources):
    # 100 is every core busy. A node busy with its own trainings is the training
    # slots' business; this rule defers only on an overloaded node, with twice
    # as many runnable processes as cores.
    max_cpu_load_pct: float = 200.0
    min_free_disk_mb: float = 2048.0
    resource_retry_minutes: float = 5.0
    approval_days: float = 7.0
    emergency_bypasses_monthly_cap: bool = False
    emergency_bypasses_daily_budget: bool = True

    _cooldown: timedelta = field(init=False, repr=False, compare=False)
    _approval: timedelta = field(init=False, repr=False, compare=False)
    _resource_retry: timedelta = field(init=False, repr=False, compare=False)
    _floor_z: float = field(init=False, repr=False, compare=False)
    _roi_ok_label: str = field(init=False, repr=False, compare=False)
    _roi_low_label: str = field(init=False, repr=False, compare=False)
    _notional_label: str = field(init=False, repr=False, compare=False)
    _per_correct_label: str = field(init=False, repr=False, compare=False)
    _tz: ZoneInfo | None = field(init=False, repr=False, compare=False)
    _start: time | None = field(init=False, repr=False, compare=False)
    _start_s: int = field(init=False, repr=False, compare=False)
    _end_s: int = field(init=False, repr=False, compare=False)
    _window_label: str = field(init=False, repr=False, compare=False)
    _offpeak_tz_label: str = field(init=False, repr=False, compare=False)
    _offpeak_na: dict[TriggerKind, RuleResult] = field(init=False, repr=False, compare=False)
    # A memo of window openings per local date: pure (same date, same answer), bounded.
    _open_cache: dict[date, datetime] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"policy.{name}: {why}, got {getattr(self, name)!r}")

        _validate(self)  # the fields, by pydantic (_PolicyFields); the derived values below
        s = object.__setattr__
        s(self, "_cooldown", timedelta(hours=self.cooldown_hours))
        s(self, "_approval", timedelta(days=self.approval_days))
        s(self, "_resource_retry", timedelta(minutes=self.resource_retry_minutes))
        s(self, "_floor_z", NormalDist().inv_cdf(self.floor_confidence))
        s(self, "_roi_ok_label", f">= {self.min_roi:g}")
        s(self, "_roi_low_label", f"< {self.min_roi:g}")
        s(self, "_notional_label", f"2 x ${self.notional_usd:,.0f} x |r| ")
        s(self, "_per_correct_label", f"${100.0 * self.value_per_accuracy_point_usd:.3g}/correct")
        s(self, "_open_cache", {})
        if (self.offpeak_start is None) != (self.offpeak_end is None):
            raise bad("offpeak_end", "set both offpeak_start and offpeak_end, or neither")
        if self.offpeak_start is None:
            s(self, "_tz", None)
            s(self, "_start", None)
            s(self, "_start_s", 0)
            s(self, "_end_s", 0)
            s(self, "_window_label", "off")
            s(self, "_offpeak_tz_label", "off")
            s(self, "_offpeak_na", {})
            return
        start = _parse_time("offpeak_start", self.offpeak_start)
        end = _parse_time("offpeak_end", self.offpeak_end)  # type: ignore[arg-type]
        if start == end:
            raise bad("offpeak_end", "must differ from offpeak_start (use None for no window)")
        try:
            tz = time_zone(self.timezone)
        except ValueError as exc:
            raise bad("timezone", str(exc)) from None
        s(self, "offpeak_start", start)
        s(self, "offpeak_end", end)
        s(self, "_tz", tz)
        s(self, "_start", start.replace(tzinfo=None))
        s(self, "_start_s", start.hour * 3600 + start.minute * 60 + start.second)
        s(self, "_end_s", end.hour * 3600 + end.minute * 60 + end.second)
        s(self, "_window_label", f"{start:%H:%M}-{end:%H:%M} {self.timezone}")
        s(self, "_offpeak_tz_label", self.timezone)
        s(self, "_offpeak_na", {
            k: RuleResult("offpeak", True, None, self._window_label, f"not applied to {k.value} requests")
            for k in TriggerKind if k not in (_SCHEDULE, _EMERGENCY)
        })

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], **overrides: Any) -> Policy:
        """Build from a config table (e.g. ``[policy]`` merged with a model's overrides).

        Unknown keys are a :class:`ConfigError` that names them, not a silent no-op.
        """
        known = {f.name for f in fields(cls) if f.init}
        merged = {**data, **overrides}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ConfigError(f"policy: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(**merged)
        except TypeError as exc:
            raise ConfigError(f"policy: {exc}") from None

    # -- off-peak window -------------------------------------------------

    def in_offpeak(self, when: datetime) -> bool:
        """Whether ``when`` falls inside the off-peak window (always True when there is none)."""
        if self._tz is None:
            return True
        local = when.astimezone(self._tz)
        return self._in_window_s(local.hour * 3600 + local.minute * 60 + local.second)

    def _in_window_s(self, sec: int) -> bool:
        a, b = self._start_s, self._end_s
        if a < b:
            return a <= sec < b
        return sec >= a or sec < b  # the window wraps midnight

    def next_offpeak_open(self, after: datetime) -> datetime:
        """The first instant strictly after ``after`` at which the window is open, in UTC."""
        if self._tz is None:
            return after
        day = after.astimezone(self._tz).date()
        for i in range(4):
            cand = self._open_instant(day + timedelta(days=i))
            if cand > after and self.in_offpeak(cand):
                return cand
        # Only reachable for a window that a DST jump wipes out for days on end.
        raise ConfigError(f"policy.offpeak_start: the window {self._window_label} never opens after {after}")

    def _open_instant(self, d: date) -> datetime:
        cache = self._open_cache
        hit = cache.get(d)
        if hit is None:
            if len(cache) >= _OPEN_CACHE_MAX:
                cache.clear()
            hit = cache[d] = self._compute_open_instant(d)
        return hit

    def _compute_open_instant(self, d: date) -> datetime:
        tz = self._tz
        naive = datetime.combine(d, self._start)  # type: ignore[arg-type]
        # fold=0 is the first occurrence of an ambiguous (fall-back) wall time.
        t0 = naive.replace(tzinfo=tz).astimezone(_UTC)
        if t0.astimezone(tz).replace(tzinfo=None) == naive:
            return t0
        # The start falls in a spring-forward gap: the window opens when the
        # local clock first reads >= start, i.e. at the transition instant,
        # which lies between the fold=1 and fold=0 readings. Bisect to 1 s.
        t1 = naive.replace(tzinfo=tz, fold=1).astimezone(_UTC)
        lo, hi = (t1, t0) if t1 < t0 else (t0, t1)
        one = timedelta(seconds=1)
        while hi - lo > one:
            mid = lo + (hi - lo) / 2
            mid = mid.replace(microsecond=0)
            if mid.astimezone(tz).replace(tzinfo=None) >= naive:
                hi = mid
            else:
                lo = mid
        return hi


def serving_rate(served: int, minutes: int, first: datetime | None, last: datetime | None,
                 now: datetime) -> tuple[float, str]:
    """Predictions a day from ``served`` predictions (labelled or not) in ``minutes`` distinct
    minute buckets between ``first`` and ``last``; returns the rate and how it was measured.

    The span is measured between the buckets, not up to ``now``: outcomes arrive
    when their labels do, so with a label delay the newest stretch is empty. Each
    bucket stands for the mean gap between buckets, so k buckets cover
    ``(last - first) x k / (k - 1)``: one prediction a day for a week reads 1/day,
    5,000 a second reads 4.32e8/day. A single bucket tells no rate: what it holds
    is spread over the time since it, and at least a day.

    >>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> round(serving_rate(7, 7, t, t + timedelta(days=6), t + timedelta(days=8))[0], 6)
    1.0
    """
    if served <= 0 or first is None or last is None:
        return 0.0, "no predictions served in the window"
    span_s = (last - first).total_seconds()
    if minutes >= 2 and span_s > 0.0:
        covered_s = span_s * minutes / (minutes - 1)
        return served * 86400.0 / covered_s, (f"{served:,} served (labelled or not) in {minutes:,} minute buckets "
                                              f"over {_span(covered_s)}")
    covered_s = max((now - first).total_seconds(), 86400.0)
    return served * 86400.0 / covered_s, f"{served:,} served in one minute bucket, spread over {_span(covered_s)}"


def _number(v: Any) -> float | None:
    """An evidence value as a float, or None when it is not a number."""
    return float(v) if isinstance(v, (int, float)) else None


def _span(seconds: float) -> str:
    return f"{seconds / 86400.0:.3g} d" if seconds >= 86400.0 else f"{seconds / 3600.0:.3g} h"


def value_model(request: RetrainRequest, state: StateSnapshot, policy: Policy,
                now: datetime | None = None) -> dict[str, Any]:
    """The expected benefit of the retraining, its ROI and the floor clock (see the module docstring).

    ``now`` (aware) gives ``hours_below_floor``; without it the clock is not read.
    """
    ev = request.evidence
    source = "default"
    gap = policy.default_gap_points
    cur_f = floor_f = None
    n = None
    if ev:
        base = _number(ev.get("baseline_accuracy"))
        cur = _number(ev.get("current_accuracy"))
        floor = _number(ev.get("accuracy_floor"))
        if floor is not None and not floor > 0:
            floor = None
        # Accuracies are fractions in the metrics windows; a value > 1 can only be a percentage.
        pct = (cur is not None and cur > 1.0) or (base is not None and base > 1.0)
        if cur is not None:
            cur_f = cur / 100.0 if pct else cur
        if floor is not None:
            floor_f = floor / 100.0 if floor > 1.0 else floor
        explicit = ev.get("expected_recovery_points")
        if isinstance(explicit, (int, float)):
            gap = float(explicit)
            source = "evidence.expected_recovery_points"
        elif cur_f is not None and (base is not None or floor is not None):
            base_f = (base / 100.0 if pct else base) if base is not None else None
            if floor_f is not None and (base_f is None or floor_f > base_f):
                gap = (floor_f - cur_f) * 100.0
                source = "evidence.accuracy_floor-current_accuracy"
            else:
                assert base_f is not None  # no floor here, so the baseline is what let us in
                gap = (base_f - cur_f) * 100.0
                source = "evidence.baseline_accuracy-current_accuracy"
        counted = ev.get("measured_on", ev.get("n"))
        if isinstance(counted, (int, float)) and not isinstance(counted, bool) and counted >= 1:
            n = int(counted)
    measured = gap
    if not math.isfinite(gap) or gap < 0.0:
        gap = 0.0
    elif gap > policy.max_gap_points:
        gap = policy.max_gap_points
    recovery = gap * policy.recovery_factor
    horizon = max(policy.value_horizon_days, state.lookback_days)
    predictions = state.predictions_per_day * horizon
    rms = state.return_rms
    if rms is not None and rms > 0.0 and math.isfinite(rms):
        basis = "returns"
        mean_abs = rms * _ABS_PER_RMS
        per_correct = 2.0 * policy.notional_usd * mean_abs
    else:
        basis = "per_correct"
        mean_abs = None
        per_correct = 100.0 * policy.value_per_accuracy_point_usd
    benefit = per_correct * recovery / 100.0 * predictions
    cost = state.estimated_cost_usd

    # The floor: below when even the upper bound of live accuracy is; not below when the estimate is not.
    below: bool | None = None
    upper = None
    if cur_f is not None and floor_f is not None and math.isfinite(cur_f):
        if cur_f >= floor_f:
            below = False
        else:
            upper = cur_f
            if n is not None:
                p = min(max(cur_f, 0.0), 1.0)
                upper = cur_f + policy._floor_z * math.sqrt(p * (1.0 - p) / n)
            below = True if upper < floor_f else None
    since = state.below_floor_since if below else None
    hours = None
    if below and now is not None:
        since = since or now  # this decision starts the clock
        hours = max(0.0, (now - since).total_seconds() / 3600.0)
    return {
        "gap_points": gap,
        "gap_source": source,
        # Before the clamp to [0, max_gap_points]; None when not a finite number.
        "gap_measured_points": measured if math.isfinite(measured) else None,
        "max_gap_points": policy.max_gap_points,
        "recovery_factor": policy.recovery_factor,
        "recovery_points": recovery,
        "predictions_per_day": state.predictions_per_day,
        "predictions_source": state.predictions_source,
        "horizon_days": horizon,
        "predictions": predictions,
        "basis": basis,
        "notional_usd": policy.notional_usd if basis == "returns" else None,
        "mean_abs_return": mean_abs,
        "returns_measured_on": state.returns_measured_on if basis == "returns" else 0,
        "value_per_accuracy_point_usd": policy.value_per_accuracy_point_usd,
        "value_per_correct_usd": per_correct,
        "benefit_usd": benefit,
        "estimated_cost_usd": cost,
        # None, not inf: the audit record is JSON and JSON has no infinity.
        "roi": benefit / cost if cost > 0.0 else None,
        "min_roi": policy.min_roi,
        "current_accuracy": cur_f,
        "accuracy_floor": floor_f,
        "accuracy_upper_bound": upper,
        "measured_on": n,
        "below_floor": below,
        "below_floor_since": since.isoformat() if since is not None else None,
        "hours_below_floor": hours,
        "max_hours_below_floor_on_roi": policy.max_hours_below_floor_on_roi,
    }


def format_usd(v: Any) -> str:
    """An amount in dollars for a person, ``-`` when it is not a number: the decision's
    explanations and the command line write money alike.

    >>> format_usd(1234.5), format_usd(0.0042), format_usd(None)
    ('$1,234.50', '$0.0042', '-')
    """
    if not isinstance(v, Real):
        return "-"
    # Cents for dollars; a training of a few seconds costs a fraction of a cent, and "$0.00" would hide it.
    return f"${v:,.2f}" if v == 0 or abs(float(v)) >= 0.995 else f"${v:.4f}"


def _roi_detail(vm: dict[str, Any], roi: float | None, roi_ok: bool, policy: Policy, cost: float) -> str:
    # Labels that depend only on the policy are built once (Policy.__post_init__): this runs on every decision.
    if roi is None:
        verdict = "no cost estimate"
    else:
        verdict = f"{roi:.3g} {policy._roi_ok_label if roi_ok else policy._roi_low_label}"
    if vm["basis"] == "returns":
        per = f"{policy._notional_label}{vm['mean_abs_return']:.3g}"
    else:
        per = policy._per_correct_label
    return (f"{verdict}: benefit {format_usd(vm['benefit_usd'])} = {per} x {vm['recovery_points']:.3g} pt x "
            f"{vm['predictions']:.4g} predictions ({vm['predictions_per_day']:.4g}/d x {vm['horizon_days']:g} d)"
            f"; estimate {format_usd(cost)}")


def _month_start_after(now: datetime) -> datetime:
    if now.month == 12:
        return datetime(now.year + 1, 1, 1, tzinfo=_UTC)
    return datetime(now.year, now.month + 1, 1, tzinfo=_UTC)


def _cap(t: _Tally, rule: str, spent: float, cost: float, cap: float | None, reset_at: datetime,
         bypass: str | None) -> None:
    """One spend cap: projected spend against the cap; defer to the reset, or reject if it never fits."""
    projected = spent + cost
    if cap is None:
        t.rules.append(_RR(rule, True, projected, None, "no cap", bypass is not None))
    elif projected <= cap:
        # value and limit already say it; no float formatting on the common path.
        t.rules.append(_RR(rule, True, projected, cap, "within cap", bypass is not None))
    else:
        over = f"{format_usd(spent)} spent + {format_usd(cost)} estimate > {format_usd(cap)}"
        if bypass is not None:
            t.rules.append(_RR(rule, False, projected, cap, f"{over}; bypassed ({bypass})", True))
        elif cost > cap:
            t.reject(_RR(rule, False, projected, cap,
                         f"estimate {format_usd(cost)} alone exceeds the cap {format_usd(cap)}"))
        else:
            t.defer(_RR(rule, False, projected, cap, over, False, reset_at))


class _Tally:
    """What the rules found so far: every result in order, and the rejecting and deferring ones."""

    __slots__ = ("rules", "rejects", "defers", "defer_rules")

    def __init__(self) -> None:
        self.rules: list[RuleResult] = []
        self.rejects: list[str] = []
        self.defers: list[datetime] = []
        self.defer_rules: list[str] = []

    def defer(self, result: RuleResult) -> None:
        """A failed rule that only delays the request, until its ``retry_at``."""
        assert result.retry_at is not None
        self.rules.append(result)
        self.defers.append(result.retry_at)
        self.defer_rules.append(result.rule)

    def reject(self, result: RuleResult) -> None:
        self.rules.append(result)
        self.rejects.append(result.rule)


def decide(request: RetrainRequest, state: StateSnapshot, policy: Policy, now: datetime) -> Decision:
    """Decide what to do with one retraining request; pure and deterministic.

    ``now`` must be timezone-aware (it is converted to UTC). See the module
    docstring for the rules, the precedence of verdicts and the value model:
    one function below per rule, in the order they are listed.
    """
    if now.tzinfo is not _UTC:
        now = utc(now)
    emergency = request.trigger is _EMERGENCY
    next_midnight = datetime(now.year, now.month, now.day, tzinfo=_UTC) + _DAY
    t = _Tally()
    _rule_paused(t, state)
    _rule_coalesce(t, state)
    pending = _rule_approval(t, request, state, policy, now, emergency)
    _rule_cooldown(t, state, policy, now, emergency)
    _rule_daily_runs(t, state, policy, now, emergency)
    _rule_global_daily_runs(t, state, policy, next_midnight, emergency)
    _rule_offpeak(t, request, policy, now, emergency)
    _rule_resources(t, state, policy, now)
    override = _rule_budget_override(t, request)
    _rule_budgets(t, state, policy, now, next_midnight, emergency, override)
    vm, yields_to = _rule_roi(t, request, state, policy, now, emergency, override)
    return _verdict(t, request, state, policy, now, pending, vm, yields_to, override)


def _rule_paused(t: _Tally, state: StateSnapshot) -> None:
    if state.paused or state.globally_paused:
        scope = "all retraining is paused" if state.globally_paused else "model is paused"
        t.reject(_RR("paused", False, True, False, scope))
    else:
        t.rules.append(_NOT_PAUSED)


def _rule_coalesce(t: _Tally, state: StateSnapshot) -> None:
    active = state.active_run_id
    t.rules.append(_NO_ACTIVE if active is None else _RR("coalesce", False, active, None, f"joins active run {active}"))


def _rule_approval(t: _Tally, request: RetrainRequest, state: StateSnapshot, policy: Policy, now: datetime,
                   emergency: bool) -> bool:
    """Returns whether the request waits for a person."""
    limit_days = policy.approval_days
    deployed = state.deployed_at
    if deployed is None:
        age_days = None
        needs = limit_days > 0
        what = "not deployed yet"
    else:
        age = now - deployed
        age_days = round(age.total_seconds() / 86400.0, 4)
        needs = age < policy._approval
        what = f"deployed {age_days:.2f} d ago"
    add = t.rules.append
    if not needs:
        add(_RR("approval", True, age_days, limit_days, what))
    elif emergency:
        add(_RR("approval", False, age_days, limit_days, f"{what}; bypassed (emergency)", True))
    else:
        ev = request.evidence
        approver = ev.get("approved_by") if ev else None
        if approver:
            add(_RR("approval", True, age_days, limit_days, f"{what}; approved by {approver}"))
        else:
            add(_RR("approval", False, age_days, limit_days, f"{what}; manual approval required"))
            return True
    return False


def _rule_cooldown(t: _Tally, state: StateSnapshot, policy: Policy, now: datetime, emergency: bool) -> None:
    starts = state.recent_run_starts
    cd_hours = policy.cooldown_hours
    if not starts:
        t.rules.append(_RR("cooldown", True, None, cd_hours, "no previous run", emergency))
        return
    last = starts[-1]
    since = now - last
    since_h = round(since.total_seconds() / 3600.0, 4)
    if since >= policy._cooldown:
        t.rules.append(_RR("cooldown", True, since_h, cd_hours, f"last start {since_h:.2f} h ago", emergency))
    elif emergency:
        t.rules.append(_RR("cooldown", False, since_h, cd_hours,
                           f"last start {since_h:.2f} h ago; bypassed (emergency)", True))
    else:
        t.defer(_RR("cooldown", False, since_h, cd_hours, f"last start {since_h:.2f} h ago", False,
                    last + policy._cooldown))


def _rule_daily_runs(t: _Tally, state: StateSnapshot, policy: Policy, now: datetime, emergency: bool) -> None:
    """The model's own run limit, over a rolling 24 h or the UTC day."""
    starts = state.recent_run_starts
    max_runs = policy.max_runs_per_model_per_day
    day_retry: datetime | None
    if policy.daily_window == "rolling":
        first = bisect_right(starts, now - _DAY) if starts else 0
        count = len(starts) - first
        day_retry = starts[first + count - max_runs] + _DAY if count >= max_runs else None
        window = "in the last 24 h"
    else:
        midnight = datetime(now.year, now.month, now.day, tzinfo=_UTC)
        count = len(starts) - bisect_left(starts, midnight) if starts else 0
        day_retry = midnight + _DAY
        window = "today (UTC)"
    if count < max_runs:
        t.rules.append(_RR("daily_runs", True, count, max_runs, f"{count} run(s) {window}", emergency))
    elif emergency:
        t.rules.append(_RR("daily_runs", False, count, max_runs, f"{count} run(s) {window}; bypassed (emergency)",
                           True))
    else:
        t.defer(_RR("daily_runs", False, count, max_runs, f"{count} run(s) {window}", False, day_retry))


def _rule_global_daily_runs(t: _Tally, state: StateSnapshot, policy: Policy, next_midnight: datetime,
                            emergency: bool) -> None:
    gcap = policy.max_runs_global_per_day
    gcount = state.runs_today_global
    if gcap is None:
        t.rules.append(_RR("global_daily_runs", True, gcount, None, "no cap", emergency))
    elif gcount < gcap:
        t.rules.append(_RR("global_daily_runs", True, gcount, gcap, f"{gcount} run(s) today (UTC)", emergency))
    elif emergency:
        t.rules.append(_RR("global_daily_runs", False, gcount, gcap, f"{gcount} run(s) today; bypassed (emergency)",
                           True))
    else:
        t.defer(_RR("global_daily_runs", False, gcount, gcap, f"{gcount} run(s) today (UTC)", False, next_midnight))


def _rule_offpeak(t: _Tally, request: RetrainRequest, policy: Policy, now: datetime, emergency: bool) -> None:
    """Only scheduled requests wait for the window; zoneinfo is only touched then."""
    trig = request.trigger
    if policy._tz is None:
        t.rules.append(_RR("offpeak", True, None, None, "no off-peak window", emergency))
        return
    if not (trig is _SCHEDULE or emergency):
        t.rules.append(policy._offpeak_na[trig])
        return
    local = now.astimezone(policy._tz)
    local_s = f"{local.hour:02d}:{local.minute:02d}"
    label = policy._window_label
    if policy._in_window_s(local.hour * 3600 + local.minute * 60 + local.second):
        t.rules.append(_RR("offpeak", True, local_s, label, "inside the window", emergency))
    elif emergency:
        t.rules.append(_RR("offpeak", False, local_s, label, "outside the window; bypassed (emergency)", True))
    else:
        t.defer(_RR("offpeak", False, local_s, label, "outside the window", False, policy.next_offpeak_open(now)))


def _rule_resources(t: _Tally, state: StateSnapshot, policy: Policy, now: datetime) -> None:
    res = state.resources
    if res is None:
        t.rules.append(_NO_READING)
        return
    short = []
    if res.free_memory_mb < policy.min_free_memory_mb:
        short.append(f"free memory {res.free_memory_mb:.0f} MB < {policy.min_free_memory_mb:.0f}")
    if res.cpu_load_pct > policy.max_cpu_load_pct:
        short.append(f"CPU load {res.cpu_load_pct:.0f} % > {policy.max_cpu_load_pct:.0f}")
    if res.free_disk_mb < policy.min_free_disk_mb:
        short.append(f"free disk {res.free_disk_mb:.0f} MB < {policy.min_free_disk_mb:.0f}")
    value = {"free_memory_mb": res.free_memory_mb, "cpu_load_pct": res.cpu_load_pct, "free_disk_mb": res.free_disk_mb}
    limit = {"min_free_memory_mb": policy.min_free_memory_mb, "max_cpu_load_pct": policy.max_cpu_load_pct,
             "min_free_disk_mb": policy.min_free_disk_mb}
    if short:
        t.defer(_RR("resources", False, value, limit, "; ".join(short), False, now + policy._resource_retry))
    else:
        t.rules.append(_RR("resources", True, value, limit, "enough memory, CPU and disk"))


def _rule_budget_override(t: _Tally, request: RetrainRequest) -> str | None:
    """Returns the override (who and why) when one was asked for with a reason."""
    if not request.override_budget:
        t.rules.append(_NO_OVERRIDE)
        return None
    ev = request.evidence
    reason = ev.get("override_reason") if ev else None
    if isinstance(reason, str) and reason.strip():
        override = f"override by {request.requested_by}: {reason.strip()}"
        t.rules.append(_RR("budget_override", True, True, "reason required", override))
        return override
    t.reject(_RR("budget_override", False, True, "reason required",
                 "override_budget without evidence['override_reason']; override ignored"))
    return None


def _rule_budgets(t: _Tally, state: StateSnapshot, policy: Policy, now: datetime, next_midnight: datetime,
                  emergency: bool, override: str | None) -> None:
    cost = state.estimated_cost_usd
    month_reset = _month_start_after(now)
    daily_bypass = override or ("emergency" if emergency and policy.emergency_bypasses_daily_budget else None)
    monthly_bypass = override or ("emergency" if emergency and policy.emergency_bypasses_monthly_cap else None)
    for rule, spent, cap, reset_at, bypass in (
            ("budget_daily", state.spend_today_usd, policy.daily_budget_usd, next_midnight, daily_bypass),
            ("budget_monthly", state.spend_month_usd, policy.monthly_budget_usd, month_reset, monthly_bypass),
            ("model_budget_daily", state.model_spend_today_usd, policy.model_daily_budget_usd, next_midnight,
             daily_bypass),
            ("model_budget_monthly", state.model_spend_month_usd, policy.model_monthly_budget_usd, month_reset,
             monthly_bypass)):
        _cap(t, rule, spent, cost, cap, reset_at, bypass)


def _rule_roi(t: _Tally, request: RetrainRequest, state: StateSnapshot, policy: Policy, now: datetime,
              emergency: bool, override: str | None) -> tuple[dict[str, Any], str | None]:
    """Returns the value model and what a failed ROI yields to, if anything."""
    vm = value_model(request, state, policy, now)
    roi = vm["roi"]
    min_roi = policy.min_roi
    roi_ok = roi is None or roi >= min_roi
    yields_to = None
    if not roi_ok and override is None and state.has_production:
        limit_h = policy.max_hours_below_floor_on_roi
        hours = vm["hours_below_floor"]
        if emergency and request.severity == _CRITICAL:
            yields_to = "CRITICAL emergency"
        elif hours is not None and limit_h is not None and hours >= limit_h:
            yields_to = (f"below the accuracy floor {vm['accuracy_floor']:.3f} for {hours:.1f} h >= "
                         f"{limit_h:g} h (max_hours_below_floor_on_roi)")
    detail = _roi_detail(vm, roi, roi_ok, policy, state.estimated_cost_usd)
    if override is not None:
        t.rules.append(_RR("roi", roi_ok, roi, min_roi, f"{detail}; bypassed ({override})", True))
    elif not state.has_production:
        # A first version has no live figures to recover: its value is having a model at all.
        t.rules.append(_RR("roi", True, None, min_roi, "not applicable: no version in production yet"))
    elif yields_to is not None:
        t.rules.append(_RR("roi", False, roi, min_roi, f"{detail}; yields: {yields_to}", True))
    else:
        if not roi_ok and vm["hours_below_floor"] is not None and policy.max_hours_below_floor_on_roi is not None:
            detail += (f"; below the floor {vm['hours_below_floor']:.1f} h of "
                       f"{policy.max_hours_below_floor_on_roi:g} h before ROI yields")
        result = _RR("roi", roi_ok, roi, min_roi, detail)
        if roi_ok:
            t.rules.append(result)
        else:
            t.reject(result)
    return vm, yields_to


def _verdict(t: _Tally, request: RetrainRequest, state: StateSnapshot, policy: Policy, now: datetime,
             pending: bool, vm: dict[str, Any], yields_to: str | None, override: str | None) -> Decision:
    """The verdict by precedence (module docstring), with what explains it in ``detail``."""
    rejects, defers, defer_rules = t.rejects, t.defers, t.defer_rules
    active = state.active_run_id
    detail: dict[str, Any] = {"value_model": vm}
    defer_until = None
    if active is not None:
        verdict = Verdict.COALESCED
        detail["coalesced_with"] = active
    elif rejects:
        verdict = Verdict.REJECT
        detail["reject_rules"] = rejects
    elif defers:
        verdict = Verdict.DEFER
        defer_until = max(defers)
        # Every deferring rule passes by its own retry time except the window,
        # which can close again; a scheduled run must land inside it.
        if request.trigger is _SCHEDULE and policy._tz is not None and not policy.in_offpeak(defer_until):
            defer_until = policy.next_offpeak_open(defer_until)
        detail["defer_rules"] = defer_rules
    elif pending:
        verdict = Verdict.PENDING_APPROVAL
    else:
        verdict = Verdict.APPROVE
    if rejects and verdict is not Verdict.REJECT:
        detail["reject_rules"] = rejects
    if defers and verdict is not Verdict.DEFER:
        detail["defer_rules"] = defer_rules
    if request.trigger is _EMERGENCY:
        detail["emergency"] = True
    if yields_to is not None:
        detail["roi_yields_to"] = yields_to
    if override is not None:
        detail["override"] = override
    return Decision(request.id, request.model, verdict, now, tuple(t.rules), defer_until, state.estimated_cost_usd,
                    request.priority, detail)
