"""The report's notes: where a policy's settings cannot act at the data's rate, and what to change.

Every check reads the settings the replay actually ran with (the model file after
:func:`~retrain.backtest.policies.configure`, widened windows included) and the data's
own rate, so a note names the field, what it asks for, what the data brings, and a
value that would fit. A trigger the policy switched off (``never``, ``every:``) is not
checked. The validation gates are checked as the steps run them: the rows a shadow or
a canary stage waits for are the model file's, or, left unset, what the test needs
(:func:`gate_rows`); where those rows cannot arrive in time and
``validation.walk_forward`` is on, the note says the candidates are judged by
walk-forward instead (not a dead end), and the holdout, which then only screens, gets
no note. :func:`outcome_notes` then says what the replay's own results show: requests
that were all turned down, trainings that were never promoted, a model that does not
beat a trivial baseline.

>>> from datetime import timedelta
>>> from retrain.backtest.policies import default_config
>>> cfg = default_config(("x",), rows_per_minute=1 / 1440, lookback=timedelta(days=365)).model("backtest")
>>> notes = rate_notes(cfg, rows_per_minute=1 / 1440, label_delay=timedelta(days=1),
...                    after_warmup=timedelta(days=365), row_gap=timedelta(days=1))
>>> any(n.startswith("performance trigger cannot fire: it needs 2,000 outcomes") for n in notes)
True
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import timedelta
from statistics import NormalDist
from typing import Any

from retrain.backtest.durations import human_duration
from retrain.config import ModelConfig

__all__ = ["rate_notes", "outcome_notes", "holdout_rows_needed", "gate_rows"]


def _n(x: float) -> str:
    """A count as people read it: 1,000; 2.5; 0.04."""
    if x >= 100 or (x >= 1 and abs(x - round(x)) < 0.05) or x == 0:
        return f"{round(x):,}"
    return f"{x:.2g}" if x < 1 else f"{x:.1f}"


def _fixes(*options: str | None) -> str:
    """``set A, or B, or C`` from the options that apply (None: an option that would not fit the data)."""
    kept = [o for o in options if o]
    return "set " + ", or ".join(kept) if kept else ""


def _per(rate: float) -> str:
    """``rate`` rows a minute, in the unit that reads best."""
    for per, minutes in (("minute", 1), ("hour", 60), ("day", 1440), ("week", 10080)):
        if rate * minutes >= 1 or per == "week":
            count = _n(rate * minutes)
            return f"{count} row{'' if count == '1' else 's'} {'an' if per == 'hour' else 'a'} {per}"
    return ""  # pragma: no cover


def _hours(minutes: float) -> str:
    return human_duration(timedelta(minutes=minutes))


def holdout_rows_needed(improvement: float, accuracy: float, confidence: float) -> int:
    """Held-out rows for a relative ``improvement`` of ``accuracy`` to stand out from the holdout's
    noise at ``confidence`` (one-sided): the standard error of an accuracy on ``n`` rows is
    ``sqrt(p (1 - p) / n)``, and the improvement must be ``z`` of them."""
    if improvement <= 0:
        return 0
    z = NormalDist().inv_cdf(confidence)
    p = min(max(accuracy, 0.05), 0.95)
    d = improvement * p
    return math.ceil(z * z * p * (1 - p) / (d * d))


def rate_notes(cfg: ModelConfig, *, rows_per_minute: float, label_delay: timedelta, after_warmup: timedelta,
               row_gap: timedelta, every: timedelta | None = None, accuracy: float | None = None,
               approve_after: timedelta | None = timedelta(minutes=30), retrains: bool = True) -> list[str]:
    """Sentences for each setting of ``cfg`` that cannot act at ``rows_per_minute`` (see the module doc).

    ``retrains`` false (``never``): the first model is promoted at once and never replaced, so
    the validation gates (holdout, shadow, canary stages) are not checked."""
    rate = max(rows_per_minute, 1e-12)
    span_min = after_warmup.total_seconds() / 60.0
    name = f"models.{cfg.name}"
    out: list[str] = []
    t = cfg.thresholds
    if t.metrics:
        have = rate * min(t.window_minutes, span_min)
        if have < t.min_samples:
            need_window = math.ceil(t.min_samples / rate)
            fix = (f"set {name}.thresholds.window_minutes >= {need_window:,} or thresholds.min_samples <= "
                   f"{max(1, math.floor(have)):,}")
            if need_window > span_min:
                fix = (f"the data after the warm-up holds about {_n(rate * span_min)} outcomes in all: lower "
                       f"{name}.thresholds.min_samples to <= {max(1, math.floor(have)):,}")
            out.append(f"performance trigger cannot fire: it needs {t.min_samples:,} outcomes within its "
                       f"{_hours(t.window_minutes)} window (thresholds.min_samples, thresholds.window_minutes) "
                       f"but the data brings about {_n(have)} ({_per(rate)}); {fix}")
    d = cfg.drift
    if d.enabled:
        kept = min(rate, cfg.sample.max_per_minute or rate) * cfg.sample.rate
        have = min(kept * min(d.current_minutes, span_min), d.max_rows)
        if have < d.min_rows:
            need = math.ceil(d.min_rows / max(kept, 1e-12))
            fix = _fixes(f"{name}.drift.current_minutes >= {need:,}" if need <= span_min else None,
                         f"drift.min_rows <= {math.floor(have):,}" if have >= 10 else None)
            out.append(f"drift trigger cannot fire: it compares at least {d.min_rows:,} sampled rows of its "
                       f"{_hours(d.current_minutes)} window (drift.min_rows, drift.current_minutes) but the data "
                       f"brings about {_n(have)} ({_per(rate)}, sample.rate {cfg.sample.rate:g})"
                       + (f"; {fix}" if fix else "; drift cannot be tested at this rate"))
    e = cfg.emergency
    if e.enabled:
        per_bucket = rate * e.bucket_minutes
        history = e.history_buckets * e.bucket_minutes
        if per_bucket < e.min_samples:
            out.append(f"emergency detector cannot fire: it needs {e.min_samples:,} outcomes per "
                       f"{_hours(e.bucket_minutes)} bucket (emergency.min_samples, emergency.bucket_minutes) but "
                       f"the data brings about {_n(per_bucket)}; set {name}.emergency.bucket_minutes >= "
                       f"{math.ceil(e.min_samples / rate):,}")
        elif history > span_min:
            fit = math.floor(span_min / e.bucket_minutes) // 2
            out.append(f"emergency detector cannot fire: it needs {e.history_buckets} buckets of "
                       f"{_hours(e.bucket_minutes)} ({_hours(history)}) of history (emergency.history_buckets) and "
                       f"the data after the warm-up spans {_hours(span_min)}"
                       + (f"; set {name}.emergency.history_buckets <= {fit}" if fit >= 10 else
                          ": there are too few buckets at this rate"))
    if retrains:
        out += _gate_notes(cfg, name, rate, span_min, label_delay, accuracy)
    if every is not None and row_gap > every:
        out.append(f"every:{human_duration(every)} is shorter than the data's usual gap between rows "
                   f"({human_duration(row_gap)}): about {row_gap / every:.0f} of its trainings in a row see the "
                   f"same rows")
    if approve_after is None and every is None:
        out.append("requests that need approval (the first week of a model, policy.approval_days) wait for ever: "
                   "--approve-after never")
    return out


def gate_rows(cfg: ModelConfig, accuracy: float | None = None) -> tuple[int, int]:
    """Rows the shadow's paired test and a canary stage's test wait for: the settings' own
    ``validation.shadow_min_rows`` and ``rollout.stage_min_samples`` when set, else what the
    tests need (:mod:`retrain.core.evidence`) at ``accuracy`` (0.5 when unknown), as the steps size them."""
    v, r = cfg.validation, cfg.rollout
    shadow, stage = v.shadow_min_rows, r.stage_min_samples
    if shadow is None or stage is None:
        from retrain.core.evidence import independent_rows_needed, unplanned_paired_rows

        if shadow is None:
            shadow = unplanned_paired_rows(accuracy, v)
        if stage is None:
            stage = independent_rows_needed(0.5 if accuracy is None else accuracy, r.rollback_degradation,
                                            confidence=v.confidence, power=v.power)
    return int(shadow), int(stage)


def _gate_notes(cfg: ModelConfig, name: str, rate: float, span_min: float, label_delay: timedelta,
                accuracy: float | None) -> list[str]:
    """The validation gates a retrained candidate meets: the holdout, the shadow, the canary stages."""
    v, r = cfg.validation, cfg.rollout
    delay_min = label_delay.total_seconds() / 60.0
    late = f", labels {human_duration(label_delay)} late" if delay_min else ""
    # validation.walk_forward (when this build has it): a candidate whose live rows cannot arrive in
    # time is judged on recent history instead, and the holdout only screens before a live gate.
    walk_forward = bool(getattr(v, "walk_forward", False))
    holdout_decides = not hasattr(v, "walk_forward") or not (v.shadow_enabled or r.enabled)
    out: list[str] = []
    if holdout_decides:
        trained = rate * cfg.lookback_hours * 60.0
        holdout = math.floor(trained * v.holdout_fraction)
        need = holdout_rows_needed(v.min_improvement, accuracy if accuracy is not None else 0.5, v.confidence)
        if 0 < holdout < need:
            hours = math.ceil(need / v.holdout_fraction / rate / 60)
            fix = (f"raise {name}.lookback_hours to >= {hours:,}" if hours * 60 <= span_min + cfg.lookback_hours * 60
                   else f"the whole history holds about {_n(rate * (span_min + cfg.lookback_hours * 60))} rows: "
                        f"this check cannot tell at this rate")
            out.append(f"holdout of about {_n(holdout)} rows (validation.holdout_fraction {v.holdout_fraction:g} of "
                       f"lookback_hours {cfg.lookback_hours:g} at {_per(rate)}) is below the {need:,} rows a "
                       f"+{v.min_improvement:.0%} improvement (validation.min_improvement) needs to stand out from "
                       f"noise at confidence {v.confidence:g}: candidates pass or fail it by chance; {fix}")
    shadow_rows, stage_rows = gate_rows(cfg, accuracy)
    power = getattr(v, "power", 0.8)
    # (what falls short, settings that would let it conclude, settings that turn it off)
    short: list[tuple[str, list[str | None], list[str]]] = []
    if v.shadow_enabled:
        kept = min(rate, cfg.sample.max_per_minute or rate) * cfg.sample.rate
        have = kept * max(0.0, v.shadow_max_hours * 60.0 - delay_min)
        if have < shadow_rows:
            need_h = (shadow_rows / max(kept, 1e-12) + delay_min) / 60.0
            sized = ("validation.shadow_min_rows" if v.shadow_min_rows is not None else
                     f"what its paired test needs for +{v.min_improvement:.0%} at {power:.0%} power; "
                     f"validation.shadow_min_rows unset")
            short.append((f"shadow needs {shadow_rows:,} paired rows ({sized}) within its {v.shadow_max_hours:g} h "
                          f"maximum (validation.shadow_max_hours) but the data brings about {_n(have)} "
                          f"({_per(rate)}{late})",
                          [f"{name}.validation.shadow_max_hours >= {math.ceil(need_h):,}"
                           if need_h * 60 <= span_min else None,
                           f"validation.shadow_min_rows <= {math.floor(have):,}" if have >= 30 else None],
                          [f"{name}.validation.shadow_enabled = false"]))
    if r.enabled:
        for share in r.stages:
            if share >= 100:
                continue
            have = rate * share / 100.0 * max(0.0, r.stage_max_minutes - delay_min)
            if have < stage_rows:
                need_min = stage_rows / (rate * share / 100.0) + delay_min
                sized = ("rollout.stage_min_samples" if r.stage_min_samples is not None else
                         f"what its test needs to see a {r.rollback_degradation:.0%} drop at {power:.0%} power; "
                         f"rollout.stage_min_samples unset")
                short.append((f"canary stage at {share:g}% needs {stage_rows:,} outcomes ({sized}) within its "
                              f"{_hours(r.stage_max_minutes)} maximum (rollout.stage_max_minutes) but gets about "
                              f"{_n(have)}",
                              [f"{name}.rollout.stage_max_minutes >= {math.ceil(need_min):,}"
                               if need_min <= span_min else None,
                               f"rollout.stage_min_samples <= {math.floor(have):,}" if have >= 30 else None,
                               "fewer, larger rollout.stages"],
                              [f"{name}.rollout.enabled = false"]))
                break
    if short and walk_forward:
        fits = [_fixes(*fit) for _, fit, _ in short]
        live = ("; to prove them on live traffic instead, " + "; ".join(fits)) if all(fits) else \
            "; no live gate can gather its rows at this rate"
        out.append("live validation cannot conclude in time: " + "; ".join(what for what, _, _ in short)
                   + ". Candidates are judged by walk-forward on the newest labelled history instead "
                     "(validation.walk_forward)" + live)
    else:
        ends = {"shadow": "every candidate that beats production on the holdout ends inconclusive",
                "canary": "the rollout ends inconclusive there"}
        for what, fit, off in short:
            out.append(f"{what}: {ends[what.split()[0]]}; {_fixes(*fit, *off)}")
    return out


def _rule(reason: str) -> str:
    return reason.split(":", 1)[0].strip()


def _why_not_promoted(text: str | None, status: str | None) -> str:
    t = (text or "").lower()
    if "held-out" in t or "holdout" in t:
        return "the holdout check"
    if "inconclusive" in t:
        return "ended inconclusive (not enough evidence in time)"
    if "shadow" in t:
        return "shadow"
    if "canary" in t or "stage" in t or "rolled back" in t:
        return "a canary stage"
    if status in ("candidate", "canary"):
        return "still being validated at the end"
    return (text or status or "unknown").split(";")[0][:80]


def outcome_notes(p: dict[str, Any], baselines: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """What ``p`` (a policy's report object) shows: requests all turned down, nothing promoted, no skill."""
    label = p.get("policy", "?")
    out: list[str] = []
    decisions = [d for d in p.get("decisions", []) if d.get("trigger") != "manual" or "initial" not in
                 (d.get("request") or "")]
    verdicts = Counter(d.get("verdict") for d in decisions)
    if decisions and not verdicts.get("approve"):
        rules = Counter(_rule(r) for d in decisions if d.get("verdict") != "approve" for r in d.get("reasons", []))
        top = ", ".join(f"{rule} {n:,}" for rule, n in rules.most_common(4))
        out.append(f"{label}: none of its {len(decisions):,} decisions approved a retraining; what stood in the way: "
                   f"{top}")
    versions = [v for v in p.get("versions", [])[1:]]
    if versions and not any(v.get("promoted_at") for v in versions):
        why = Counter(_why_not_promoted(v.get("validation"), v.get("status")) for v in versions)
        out.append(f"{label}: {len(versions):,} retraining(s), none promoted: " +
                   ", ".join(f"{k} {n:,}" for k, n in why.most_common(4)))
    acc = p.get("accuracy")
    if acc is not None and baselines:
        best_name, best = max(((k, b) for k, b in baselines.items() if b.get("accuracy") is not None),
                              key=lambda kb: kb[1]["accuracy"], default=(None, None))
        if best is not None and acc <= best["accuracy"]:
            out.append(f"{label}: accuracy {acc:.4f} does not beat the {best['label']} baseline "
                       f"({best['accuracy']:.4f}) on the same {p.get('predictions', 0):,} predictions: the model "
                       f"shows no skill on this data")
    return out
