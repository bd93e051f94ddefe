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
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from retrain.backtest.durations import format_duration, parse_duration
from retrain.backtest.source import DATA_SOURCE, PARAM
from retrain.config import ModelConfig, RetrainConfig, parse_config
from retrain.core.errors import ConfigError
from retrain.core.sizing import settings_for_rate

__all__ = ["PolicySpec", "parse_policy", "parse_policies", "configure", "default_config", "DEFAULT_ENTRY_POINT",
           "DEFAULT_MODEL", "EVERY_OVERRIDES", "widen_for_rate"]

DEFAULT_ENTRY_POINT = "retrain.examples.direction:train"
DEFAULT_MODEL = "backtest"

# The decision rules a fixed schedule is not subject to (budgets and ROI are
# bypassed by the request's override, approval by its approved_by).
EVERY_OVERRIDES: dict[str, Any] = {"cooldown_hours": 0.0, "max_runs_per_model_per_day": 1_000_000,
                                   "max_runs_global_per_day": None, "offpeak_start": None, "offpeak_end": None}


@dataclass(frozen=True)
class PolicySpec:
    """One policy to replay. Two specs are the same policy when kind and period agree
    (``every:7d`` is ``every:1w``); ``text`` is only how the user spelled it."""

    kind: Literal["auto", "never", "every"]
    period: timedelta | None = None
    text: str | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        """The policy as the user wrote it (``every:7d`` stays ``every:7d``): the report's key."""
        if self.text:
            return self.text
        return f"every:{format_duration(self.period)}" if self.period is not None else self.kind


def parse_policy(text: str) -> PolicySpec:
    """``auto``, ``never`` or ``every:<duration>`` (e.g. ``every:1d``, ``every:12h``)."""
    s = text.strip().lower()
    if s in ("auto", "never"):
        return PolicySpec(s)  # type: ignore[arg-type]
    if s.startswith("every:"):
        written = s[len("every:"):].replace(" ", "")
        period = parse_duration(written, f"policy {text!r}")
        if period <= timedelta(0):
            raise ConfigError(f"policy {text!r}: the period must be positive")
        return PolicySpec("every", period, text=f"every:{written}")
    raise ConfigError(f"policy: expected auto, never or every:<duration> (e.g. every:1d), got {text!r}")


def parse_policies(primary: str, compare: str | None) -> list[PolicySpec]:
    """The primary policy first, then the compared ones, without repeats."""
    specs = [parse_policy(primary)]
    for part in (compare or "").split(","):
        if part.strip():
            spec = parse_policy(part)
            if spec not in specs:  # every:24h repeats every:1d: the first spelling is kept
                specs.append(spec)
    return specs


def _sized(rate: float, m: dict[str, Any]) -> dict[str, Any]:
    """The settings a stream of ``rate`` outcomes a minute needs, from the sample sizes in ``m`` (a model body).

    The triggers' sample sizes, windows and false-alarm rate are sized by time
    (:func:`retrain.core.sizing.settings_for_rate`: at most a month of outcomes per sample,
    windows that hold them); the feature sample keeps twice ``drift.min_rows`` rows per
    drift window (all rows of a slow stream).
    """
    rate = max(rate, 1e-9)
    t, d, e = m["thresholds"], m["drift"], m["emergency"]
    sized = settings_for_rate(rate, min_samples=t["min_samples"], window_minutes=t["window_minutes"],
                              arl0=t["arl0"], drift_min_rows=d["min_rows"], drift_current_minutes=d["current_minutes"],
                              emergency_min_samples=e["min_samples"], emergency_bucket_minutes=e["bucket_minutes"],
                              emergency_history_buckets=e["history_buckets"])
    sample_rate = min(1.0, max(0.01, 2 * sized["drift.min_rows"] / (rate * sized["drift.current_minutes"])))
    sized["drift.current_minutes"] = max(sized["drift.current_minutes"],
                                         math.ceil(1.25 * sized["drift.min_rows"] / (rate * sample_rate)))
    return {**sized, "sample.rate": round(sample_rate, 4)}


#: Settings that only shrink for a slow stream (sample sizes, the false-alarm rate); windows only widen,
#: the sample rate goes both ways.
_SHRINK = frozenset({"thresholds.min_samples", "thresholds.arl0", "drift.min_rows", "emergency.history_buckets"})


def _apply(path: str, current: Any, value: Any) -> Any:
    if path == "sample.rate":
        return value
    return min(current, value) if path in _SHRINK else max(current, value)


def default_config(features: tuple[str, ...], rows_per_minute: float, lookback: timedelta) -> RetrainConfig:
    """The model file used without ``--config``: the example's classifier on ``features``, default policy.

    The triggers' defaults are built for a stream of at least ~10 outcomes a
    minute (2,000 outcomes in a 240-minute window, 500 sampled rows for drift,
    20 outcomes per 5-minute emergency bucket). On a slower stream they are sized
    by time (:func:`retrain.core.sizing.settings_for_rate`): sample sizes of at most a
    month of outcomes, windows that hold them, a false alarm in about five years
    of outcomes. The feature sample (which drift and shadow validation read)
    keeps about 1,000 rows per 240 minutes, all rows of a slower stream.
    :func:`widen_for_rate` does the same for a model file's settings left at
    their defaults.
    """
    body: dict[str, Any] = {
        "name": DEFAULT_MODEL,
        "description": "default backtest model: the example's scikit-learn classifier",
        "entry_point": DEFAULT_ENTRY_POINT,
        "features": list(features),
        "lookback_hours": max(lookback.total_seconds() / 3600.0, 1.0),
    }
    defaults = ModelConfig.model_validate(body).model_dump(mode="json")
    for path, value in _sized(rows_per_minute, defaults).items():
        section, key = path.split(".")
        current = defaults[section][key]
        body.setdefault(section, {})[key] = _apply(path, current, value)
    return parse_config({"models": {DEFAULT_MODEL: body}}, source="<backtest default>")


def widen_for_rate(config: RetrainConfig, model: str, rows_per_minute: float,
                   lookback: timedelta) -> tuple[RetrainConfig, list[str]]:
    """``config`` with ``model``'s windows widened for a slow stream, as :func:`default_config` does.

    Only settings the model file leaves at their defaults change, and only upwards
    (a window the file sets is the user's choice: the report's notes say if it cannot
    act at the data's rate). ``lookback_hours``, when not set, becomes the warm-up, as
    without ``--config``. Returns the config and one sentence per change.
    """
    cfg = config.model(model)
    body = cfg.model_dump(mode="json")
    changed: list[str] = []

    def explicit(section: str | None, key: str) -> bool:
        if section is None:
            return key in cfg.model_fields_set
        return section in cfg.model_fields_set and key in getattr(cfg, section).model_fields_set

    def fmt(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    want = {**_sized(rows_per_minute, body), "lookback_hours": max(lookback.total_seconds() / 3600.0, 1.0)}
    # A sample size the file sets stands: its window holds 1.25 times it at this rate.
    rate = max(rows_per_minute, 1e-9)
    if explicit("thresholds", "min_samples"):
        want["thresholds.window_minutes"] = math.ceil(1.25 * cfg.thresholds.min_samples / rate)
    if explicit("drift", "min_rows"):
        want["drift.current_minutes"] = math.ceil(1.25 * cfg.drift.min_rows / (rate * want["sample.rate"]))
    for path, value in want.items():
        prefix, _, key = path.rpartition(".")
        section = prefix or None
        current = body[section][key] if section else body[key]
        # A model file's sample rate only rises (its own choice for a fast stream stands).
        value = _apply(path, current, value) if section and path != "sample.rate" else max(current, value)
        if explicit(section, key) or value == current:
            continue
        if section:
            body[section] = {**body[section], key: value}
        else:
            body[key] = value
        verb = "widened" if value > current else "lowered"
        changed.append(f"models.{model}.{path} {verb} from {fmt(current)} to {fmt(value)} for a stream of "
                       f"{rows_per_minute:.3g} rows a minute (not set in {config.source})")
    if not changed:
        return config, []
    data = config.model_dump(mode="json", exclude={"models", "source"})
    data["models"] = {**{k: v.model_dump(mode="json") for k, v in config.models.items()}, model: body}
    return parse_config(data, source=config.source), changed


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
