"""What each backtested policy is, as a model file the real steps run with.

``auto``
    The configured policy, untouched: the performance, drift and emergency
    triggers, the model's schedule entries, and the decision with its
    cooldowns, limits, budgets, ROI, approval and off-peak window.
``never``
    The first model is trained at the end of the warm-up and never again: the
    triggers are switched off (no metric watched, drift and emergency disabled)
    and the schedule is empty.
``every:<duration>``
    A retraining every ``<duration>`` from the end of the warm-up, subject to
    nothing else. The replay injects a scheduled request each period, through
    the real request step, carrying an operator's approval and a budget
    override with its reason; the model's policy has no cooldown, no run limit
    and no off-peak window, so the real decision approves it. We chose this over
    a dedicated code path so that the request, the decision, its audit record,
    the cost reservation and the train -> validate -> promote steps are the
    production ones: the only difference between the policies is configuration.
    The candidate still has to pass validation, as every retraining does.

Every policy trains on the replay's own visible history (see
:mod:`retrain.backtest.source`), whatever the model file's data source says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from retrain.backtest.durations import format_duration, parse_duration
from retrain.backtest.source import DATA_SOURCE, PARAM
from retrain.config import RetrainConfig, parse_config
from retrain.errors import ConfigError

__all__ = ["PolicySpec", "parse_policy", "parse_policies", "configure", "default_config", "DEFAULT_ENTRY_POINT",
           "DEFAULT_MODEL", "EVERY_OVERRIDES"]

DEFAULT_ENTRY_POINT = "retrain.examples.direction:train"
DEFAULT_MODEL = "backtest"

# The decision rules a fixed schedule is not subject to (budgets and ROI are
# bypassed by the request's override, approval by its approved_by).
EVERY_OVERRIDES: dict[str, Any] = {"cooldown_hours": 0.0, "max_runs_per_model_per_day": 1_000_000,
                                   "max_runs_global_per_day": None, "offpeak_start": None, "offpeak_end": None}


@dataclass(frozen=True)
class PolicySpec:
    kind: Literal["auto", "never", "every"]
    period: timedelta | None = None

    @property
    def label(self) -> str:
        return f"every:{format_duration(self.period)}" if self.kind == "every" else self.kind


def parse_policy(text: str) -> PolicySpec:
    """``auto``, ``never`` or ``every:<duration>`` (e.g. ``every:1d``, ``every:12h``)."""
    s = text.strip().lower()
    if s in ("auto", "never"):
        return PolicySpec(s)  # type: ignore[arg-type]
    if s.startswith("every:"):
        period = parse_duration(s[len("every:"):], f"policy {text!r}")
        if period <= timedelta(0):
            raise ConfigError(f"policy {text!r}: the period must be positive")
        return PolicySpec("every", period)
    raise ConfigError(f"policy: expected auto, never or every:<duration> (e.g. every:1d), got {text!r}")


def parse_policies(primary: str, compare: str | None) -> list[PolicySpec]:
    """The primary policy first, then the compared ones, without repeats."""
    specs = [parse_policy(primary)]
    for part in (compare or "").split(","):
        if part.strip():
            spec = parse_policy(part)
            if spec.label not in {s.label for s in specs}:
                specs.append(spec)
    return specs


def default_config(features: tuple[str, ...], rows_per_minute: float, lookback: timedelta) -> RetrainConfig:
    """The model file used without ``--config``: the example's classifier on ``features``, default policy.

    The triggers' defaults are built for a stream of at least ~10 outcomes a
    minute (2,000 outcomes in a 240-minute window, 500 sampled rows for drift,
    20 outcomes per 5-minute emergency bucket). On a slower stream their
    windows are widened so that the same sample sizes fit in them; the
    thresholds and sample sizes themselves are the defaults. The feature sample
    (which drift and shadow validation read) keeps about 1,000 rows per 240
    minutes, all rows of a slower stream.
    """
    rate = max(rows_per_minute, 1e-9)
    window = max(240, math.ceil(1.25 * 2000 / rate))
    sample_rate = min(1.0, max(0.01, 1000 / (rate * 240)))
    drift_window = max(240, math.ceil(1.25 * 500 / (rate * sample_rate)))
    bucket = max(5, math.ceil(25 / rate))
    model = {
        "description": "default backtest model: the example's scikit-learn classifier",
        "entry_point": DEFAULT_ENTRY_POINT,
        "features": list(features),
        "lookback_hours": max(lookback.total_seconds() / 3600.0, 1.0),
        "thresholds": {"window_minutes": window},
        "drift": {"current_minutes": drift_window},
        "emergency": {"bucket_minutes": bucket},
        "sample": {"rate": round(sample_rate, 4)},
    }
    return parse_config({"models": {DEFAULT_MODEL: model}}, source="<backtest default>")


def configure(base: RetrainConfig, model: str, spec: PolicySpec, token: str) -> RetrainConfig:
    """``base`` with only ``model``, reading the replay ``token``, and set up for ``spec``."""
    cfg = base.model(model)
    body = cfg.model_dump(mode="json")
    body["data_source"] = DATA_SOURCE
    body["params"] = {**body.get("params", {}), PARAM: token}
    body["depends_on"] = []
    if spec.kind != "auto":
        body["thresholds"] = {**body["thresholds"], "metrics": []}
        body["drift"] = {**body["drift"], "enabled": False}
        body["emergency"] = {**body["emergency"], "enabled": False}
        body["schedule"] = {}
    if spec.kind == "every":
        body["policy"] = {**body.get("policy", {}), **EVERY_OVERRIDES}
    data = base.model_dump(mode="json", exclude={"models", "source"})
    data["models"] = {model: body}
    return parse_config(data, source=f"{base.source} ({spec.label})")
