"""The model file (``retrain.toml``): which models exist and how each is retrained.

::

    [settings]
    timezone = "UTC"                 # for schedules and the off-peak window
    [policy]                         # global decision policy (see retrain.core.policy.Policy)
    daily_budget_usd = 10.0
    [models.direction]
    entry_point = "retrain.examples.direction:train"     # package.module:function
    data_source = "retrain.examples.direction:history"   # or "sample" (the live feature sample)
    features = ["f0", "f1"]
    [models.direction.thresholds]    # performance trigger (metrics, relative_drop, accuracy_floor, arl0, ...)
    [models.direction.drift]         # data drift (alpha, correction, min_effect, check_every_minutes, ...)
    [models.direction.emergency]     # emergency (sigma, bucket_minutes, history_buckets, min_severity)
    [models.direction.sample]        # the live feature sample (rate, max_per_minute, max_rows)
    [models.direction.schedule]      # daily = "02:00", weekly = "sun 02:00", monthly = "1 02:00"
    [models.direction.retention]     # max_versions = 10, max_age_days = 30
    [models.direction.policy]        # per-model overrides of [policy]

Invalid files fail at start-up with a ConfigError naming the field.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from retrain.core.cron import FIELDS as CRON_FIELDS
from retrain.core.cron import expression as cron_expression
from retrain.core.errors import ConfigError
from retrain.core.notices import NotifySettings
from retrain.settings import TimeZoneName

__all__ = [
    "RetrainConfig",
    "ModelConfig",
    "Thresholds",
    "DriftSettings",
    "EmergencySettings",
    "ValidationSettings",
    "RolloutSettings",
    "ScheduleSettings",
    "SampleSettings",
    "RetentionSettings",
    "CostSettings",
    "load_config",
    "parse_config",
    "resolve_callable",
]

_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thresholds(_Strict):
    """Performance trigger (ADAPT-009); the rules are in retrain.core.triggers.

    Every metric in ``metrics`` is watched for a ``relative_drop`` against the version's
    validated baseline (a bank of Bernoulli CUSUM charts, or a Sharpe bound); accuracy is
    also held to ``accuracy_floor`` (0 turns the floor off). Nothing fires before
    ``min_samples`` outcomes in the last ``window_minutes``. ``arl0`` is the average number
    of outcomes between false alarms of a model that holds its baseline: raise it with the
    outcome rate. ``confidence`` is that of the floor and Sharpe bounds.
    """

    metrics: tuple[str, ...] = ("accuracy",)
    relative_drop: float = Field(0.05, gt=0, lt=1)
    accuracy_floor: float = Field(0.55, ge=0, lt=1)
    min_samples: int = Field(2000, ge=1)
    window_minutes: int = Field(240, ge=1)
    arl0: float = Field(10_000_000.0, gt=1)
    confidence: float = Field(0.99, gt=0.5, lt=1)

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(v) - {"accuracy", "precision", "recall", "f1", "sharpe"}
        if unknown:
            raise ValueError(f"unknown metric(s) {sorted(unknown)}; use accuracy, precision, recall, f1, sharpe")
        return v


class DriftSettings(_Strict):
    """Data drift (ADAPT-011); the tests are in retrain.core.drift.

    The live sample of the last ``current_minutes`` (at most its newest ``max_rows``
    rows, and at least ``min_rows``) is compared with the training sample of the
    production version, every ``check_every_minutes`` (0: at every sweep), so that a
    sweep a minute does not re-test an almost identical window 60 times an hour. A
    feature drifts when its adjusted p-value is below ``alpha`` and its effect size
    (KS D, or total variation) is at least ``min_effect`` (and PSI at least ``min_psi``
    if set).

    Every check is stored as a report (``retrain drift MODEL``). A drift asks for a
    retraining once per reference (the production version's training window, new at
    each promotion); against the same reference it asks again only when it gets
    worse (a feature drifts that had not, or an effect reaches ``worse_factor`` times
    its effect when last asked) or ``reask_hours`` after the last request, doubled per
    request (0: never), and neither while live accuracy is healthy (at least
    ``thresholds.min_samples`` outcomes, no performance rule firing, and accuracy not
    significantly below the floor or ``relative_drop`` under the baseline).
    """

    enabled: bool = True
    alpha: float = Field(0.05, gt=0, lt=1)
    correction: Literal["bh", "bonferroni", "none"] = "bh"
    min_rows: int = Field(500, ge=10)
    max_rows: int = Field(20_000, ge=10)
    current_minutes: int = Field(240, ge=1)
    check_every_minutes: int = Field(60, ge=0)
    min_effect: float = Field(0.05, ge=0, le=1)
    min_psi: float | None = Field(None, ge=0)
    categorical: tuple[str, ...] = ()
    worse_factor: float = Field(1.5, gt=1)
    reask_hours: float = Field(24.0, ge=0)


class EmergencySettings(_Strict):
    """Emergency (ADAPT-012); the detector is in retrain.core.emergency.

    Per ``bucket_minutes`` bucket, accuracy and mean strategy return are compared with
    the ``history_buckets`` before; ``sigma`` standard deviations below the history is
    LOW, sigma + 1 MEDIUM, sigma + 2 HIGH, sigma + 3 CRITICAL (one level more for three
    bad buckets in a row or a cliff). Only firings at ``min_severity`` or above become
    requests: a 3-sigma LOW fires on noise about once in 770 checks.
    """

    enabled: bool = True
    sigma: float = Field(3.0, gt=0)
    history_buckets: int = Field(120, ge=10)
    bucket_minutes: int = Field(5, ge=1)
    min_samples: int = Field(20, ge=1)
    min_severity: Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"] = "LOW"
    # Firings no more than this apart are one episode: one retraining, at most one rollback
    # to `previous`; a rollout in progress is aborted (retrain.core.emergency.EmergencyEpisode).
    episode_gap_minutes: float = Field(60.0, gt=0)
    # Roll production back to `previous` when it scored better than production on the recent window:
    # its live level there, else in its last service, else its holdout level (retrain.core.watch).
    rollback_to_previous: bool = True


class ValidationSettings(_Strict):
    """Offline holdout check, then shadow on live traffic (ADAPT-016); see retrain.core.rollout."""

    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    min_improvement: float = Field(0.02, ge=0)
    # false: a candidate that passes the holdout check goes straight to the canary stages.
    shadow_enabled: bool = True
    shadow_min_hours: float = Field(1.0, ge=0)
    # The time limit: a shadow (or a canary stage) that cannot gather its rows by then is not
    # started; the candidate is judged by walk-forward instead (retrain.core.evidence.plan_gate).
    shadow_max_hours: float = Field(48.0, ge=0)
    # None: the paired rows the McNemar test needs for +min_improvement at `power` (retrain.core.evidence).
    shadow_min_rows: int | None = Field(None, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)
    power: float = Field(0.8, gt=0, lt=1)
    # Where live rows cannot arrive in time: judge on the newest labelled history instead.
    walk_forward: bool = True
    walk_forward_folds: int = Field(3, ge=1, le=20)

    @model_validator(mode="after")
    def _ordered(self):
        if self.shadow_max_hours < self.shadow_min_hours:
            raise ValueError("shadow_max_hours must be >= shadow_min_hours")
        return self


class RolloutSettings(_Strict):
    """Canary stages with automatic rollback (ADAPT-016); see retrain.core.rollout."""

    # false (with shadow off too): a validated candidate becomes production at once.
    enabled: bool = True
    stages: tuple[float, ...] = (10.0, 25.0, 50.0, 100.0)
    stage_min_minutes: float = Field(60.0, ge=0)
    # None: the outcomes per arm a one-sided test needs to see a `rollback_degradation` drop at the
    # validation's confidence and power (retrain.core.evidence.independent_rows_needed).
    stage_min_samples: int | None = Field(None, ge=0)
    # A stage that has not gathered its evidence by then ends the rollout as inconclusive.
    stage_max_minutes: float = Field(1440.0, gt=0)
    rollback_degradation: float = Field(0.10, gt=0, lt=1)
    manual_gate: bool = False
    # After a full promotion, production is rolled back to the version it replaced when its live
    # primary metric falls `watch_degradation` below that version's live level just before the
    # promotion (its validated level when it has too few live outcomes), significantly at
    # validation.confidence, within `watch_hours` (0: no watch); see retrain.core.watch.
    watch_hours: float = Field(72.0, ge=0)
    watch_degradation: float = Field(0.10, gt=0, lt=1)

    @field_validator("stages")
    @classmethod
    def _increasing_to_100(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 < s <= 100 for s in v) or list(v) != sorted(set(v)) or v[-1] != 100:
            raise ValueError(f"stages must be increasing percentages in (0, 100] ending at 100, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _max_after_min(self):
        if self.stage_max_minutes < self.stage_min_minutes:
            raise ValueError("stage_max_minutes must be >= stage_min_minutes")
        return self


class ScheduleSettings(_Strict):
    daily: str | None = None  # "HH:MM"
    weekly: str | None = None  # "sun HH:MM"
    monthly: str | None = None  # "D HH:MM"
    cron: tuple[str, ...] = ()  # raw crontab "m h dom mon dow"

    @field_validator("daily")
    @classmethod
    def _hhmm(cls, v):
        if v is not None and not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", v):
            raise ValueError(f"expected HH:MM, got {v!r}")
        return v

    @field_validator("weekly")
    @classmethod
    def _weekly(cls, v):
        if v is not None and not re.fullmatch(r"(mon|tue|wed|thu|fri|sat|sun) ([01]?\d|2[0-3]):[0-5]\d", v):
            raise ValueError(f"expected 'sun HH:MM' (mon..sun), got {v!r}")
        return v

    @field_validator("monthly")
    @classmethod
    def _monthly(cls, v):
        if v is not None and not re.fullmatch(r"([1-9]|[12]\d|3[01]) ([01]?\d|2[0-3]):[0-5]\d", v):
            raise ValueError(f"expected 'D HH:MM' with D in 1..31, got {v!r}")
        return v

    @field_validator("cron")
    @classmethod
    def _cron(cls, v):
        for expr in v:
            parts = expr.split()
            if len(parts) != 5:
                raise ValueError(f"crontab {expr!r} must have 5 fields: minute hour day month weekday")
            try:
                cron_expression(dict(zip(CRON_FIELDS, parts, strict=True)))  # the one cron reader
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return v

    def crontab_fields(self) -> dict[str, dict[str, str]]:
        """Each entry as celery.schedules.crontab keyword arguments, keyed by a slot name."""
        out: dict[str, dict[str, str]] = {}
        if self.daily:
            h, m = self.daily.split(":")
            out["daily"] = {"minute": str(int(m)), "hour": str(int(h))}
        if self.weekly:
            day, hm = self.weekly.split()
            h, m = hm.split(":")
            out["weekly"] = {"minute": str(int(m)), "hour": str(int(h)), "day_of_week": day}
        if self.monthly:
            dom, hm = self.monthly.split()
            h, m = hm.split(":")
            out["monthly"] = {"minute": str(int(m)), "hour": str(int(h)), "day_of_month": dom}
        for i, expr in enumerate(self.cron):
            mi, hr, dom, mon, dow = expr.split()
            out[f"cron{i}"] = {"minute": mi, "hour": hr, "day_of_month": dom, "month_of_year": mon, "day_of_week": dow}
        return out


class SampleSettings(_Strict):
    """The bounded sample of live feature rows kept per model.

    Each labelled row is kept with probability ``rate``, and at most ``max_per_minute``
    rows of one minute are kept by each ingest worker (0: no cap), so that at a high
    outcome rate the sample still spans hours instead of the last few minutes; the
    sweep prunes it to the newest ``max_rows``.
    """

    rate: float = Field(0.1, gt=0, le=1)
    max_rows: int = Field(50_000, ge=100)
    max_per_minute: int = Field(200, ge=0)


class RetentionSettings(_Strict):
    """How many versions of a model to keep (ADAPT-014); see retrain.core.retention for the rule."""

    max_versions: int = Field(10, ge=1)
    max_age_days: float = Field(30.0, gt=0)


class ModelConfig(_Strict):
    name: str
    description: str = ""
    entry_point: str
    data_source: str = "sample"
    features: tuple[str, ...]
    primary_metric: Literal["accuracy", "precision", "recall", "f1", "sharpe"] = "accuracy"
    lookback_hours: float = Field(24.0, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)
    thresholds: Thresholds = Thresholds()
    drift: DriftSettings = DriftSettings()
    emergency: EmergencySettings = EmergencySettings()
    validation: ValidationSettings = ValidationSettings()
    rollout: RolloutSettings = RolloutSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    sample: SampleSettings = SampleSettings()
    retention: RetentionSettings = RetentionSettings()
    policy: dict[str, Any] = Field(default_factory=dict)
    # Cost estimate for a model's first run, before any run has been measured.
    first_run_cost_usd: float = Field(0.05, ge=0)
    # A trigger whose last request was rejected asks again only after this long (an emergency
    # that got more severe asks at once); see retrain.steps.sweep.
    refire_minutes: float = Field(60.0, ge=0)
    depends_on: tuple[str, ...] = ()

    @field_validator("entry_point")
    @classmethod
    def _entry(cls, v: str) -> str:
        if not _ENTRY.match(v):
            raise ValueError(f"expected 'package.module:function', got {v!r}")
        return v

    @field_validator("data_source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v != "sample" and not _ENTRY.match(v):
            raise ValueError(f"expected 'sample' or 'package.module:function', got {v!r}")
        return v

    @field_validator("features")
    @classmethod
    def _features(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one feature is needed")
        if len(set(v)) != len(v):
            raise ValueError("feature names must be unique")
        return v

    @property
    def n_features(self) -> int:
        return len(self.features)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()

    def training_fingerprint(self) -> str:
        """What a retraining's configuration is: parameters and lookback, not thresholds."""
        blob = {"params": self.params, "lookback_hours": self.lookback_hours}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


class CostSettings(_Strict):
    """Prices of a training run (ADAPT-013); see retrain.core.costs.price."""

    usd_per_cpu_second: float = Field(0.04 / 3600.0, ge=0)
    usd_per_gb_hour: float = Field(0.005, ge=0)
    usd_per_slot_hour: float = Field(0.10, ge=0)
    # Nodes bill by the minute or more: a 0.2 s fit still occupies a slot that long.
    min_billed_seconds: float = Field(60.0, ge=0)


class GeneralSettings(_Strict):
    timezone: TimeZoneName = "UTC"
    offpeak_start: str = "01:00"
    offpeak_end: str = "05:00"


class RetrainConfig(_Strict):
    settings: GeneralSettings = GeneralSettings()
    policy: dict[str, Any] = Field(default_factory=dict)
    costs: CostSettings = CostSettings()
    # [notify]: who hears about approvals, rollbacks, emergencies... (retrain.core.notices)
    notify: NotifySettings = NotifySettings()
    models: dict[str, ModelConfig]
    source: str = "<memory>"

    def model(self, name: str) -> ModelConfig:
        from retrain.core.errors import UnknownModelError

        try:
            return self.models[name]
        except KeyError:
            raise UnknownModelError(f"unknown model {name!r}; configured: {', '.join(sorted(self.models))}") from None

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()

    def policy_for(self, name: str):
        """The decision policy of one model: [policy] with the model's own overrides on top."""
        from retrain.core.policy import Policy

        base = {"timezone": self.settings.timezone, "offpeak_start": self.settings.offpeak_start,
                "offpeak_end": self.settings.offpeak_end}
        return Policy.from_mapping({**base, **self.policy, **self.model(name).policy})


def parse_config(data: dict[str, Any], source: str = "<memory>") -> RetrainConfig:
    data = dict(data)
    models = {}
    for name, body in (data.get("models") or {}).items():
        body = dict(body) if isinstance(body, dict) else body
        if isinstance(body, dict):
            body.setdefault("name", name)
        models[name] = body
    data["models"] = models
    data["source"] = source
    try:
        config = RetrainConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None
    for name in config.models:
        try:
            config.policy_for(name)
        except ConfigError as exc:
            raise ConfigError(f"{source}: models.{name}: {exc}") from None
    return config


def load_config(path: Path | str) -> RetrainConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"model file {path} not found (set RETRAIN_CONFIG or create retrain.toml)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, source=str(path))


def resolve_callable(spec: str, field: str = "entry_point") -> Callable[..., Any]:
    """Import 'package.module:function', with an error that names the field."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{field}: cannot import {module_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{field}: {module_name!r} has no callable {attr!r}")
    return fn
