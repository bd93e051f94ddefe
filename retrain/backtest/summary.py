"""From a finished replay to its part of ``report.json``: accuracy, Sharpe, trainings, costs, decisions.

Accuracy and Sharpe are computed from the replay's own per-row predictions
against the rows' labels, over every prediction after the warm-up. Everything
else is read back from the replay's store, where the real steps wrote it:
requests (trigger counts), decisions with their rules, versions, the alias
history (promotions, rollbacks), the cost ledger's ``actual`` rows (measured
CPU and memory of each training, priced as in production), drift reports.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from retrain.backtest.data import ReplayData
from retrain.backtest.notes import outcome_notes, rate_notes
from retrain.backtest.replay import ReplayOptions, ReplayOutcome
from retrain.core.domain import TriggerKind

__all__ = ["policy_report", "data_drift", "bins", "timeline_width", "baselines", "INITIAL_REASON"]

INITIAL_REASON = "initial model"
_NICE = [timedelta(minutes=m) for m in (1, 5, 10, 15, 30, 60, 120, 180, 360, 720)] + \
        [timedelta(days=d) for d in (1, 2, 7, 14, 28, 56, 91, 182, 364, 728)]


def _iso(t: datetime | float | None) -> str | None:
    if t is None:
        return None
    if not isinstance(t, datetime):
        t = datetime.fromtimestamp(float(t), tz=timezone.utc)
    return t.astimezone(timezone.utc).isoformat()


def _num(x: float | None, digits: int = 6) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


def timeline_width(data: ReplayData, max_bins: int = 150, min_rows: int = 40) -> timedelta:
    """A round bin width giving at most ~``max_bins`` bins of at least ~``min_rows`` rows each."""
    span = max(data.span.total_seconds(), 60.0)
    need = max(span / max_bins, min_rows / max(data.rows_per_minute, 1e-9) * 60.0)
    for w in _NICE:
        if w.total_seconds() >= need:
            return w
    return timedelta(seconds=need)


def bins(data: ReplayData, width: timedelta, first: float | None = None) -> list[tuple[float, float, int, int]]:
    """``(start, end, lo, hi)`` of consecutive bins of ``width`` aligned on the epoch, covering the rows."""
    w = width.total_seconds()
    start = (float(data.ts[0] if first is None else first) // w) * w
    out = []
    t = start
    while t <= data.ts[-1]:
        lo = int(np.searchsorted(data.ts, t, side="left"))
        hi = int(np.searchsorted(data.ts, t + w, side="left"))
        out.append((t, t + w, lo, hi))
        t += w
    return out


def _accuracy_bins(data: ReplayData, hit: np.ndarray, used: np.ndarray, width: timedelta) -> list[dict]:
    out = []
    for start, end, lo, hi in bins(data, width):
        n = int(used[lo:hi].sum())
        acc = float(hit[lo:hi][used[lo:hi]].mean()) if n else None
        out.append({"start": _iso(start), "end": _iso(end), "accuracy": _num(acc), "n": n})
    return out


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _reasons(rules: list[dict], verdict: str, names: dict[str, str]) -> list[str]:
    failed = [f"{r['rule']}: {r.get('detail') or ''}".rstrip(": ") for r in rules
              if not r.get("passed") and not r.get("bypassed")]
    if failed:
        # Ids are random per replay: name a run by the version it trained instead.
        return [_UUID.sub(lambda m: names.get(m.group(0), "(id)"), f) for f in failed]
    bypassed = [r["rule"] for r in rules if r.get("bypassed")]
    return ["all rules passed" + (f" (bypassed: {', '.join(bypassed)})" if bypassed else "")]


def _sharpe(data: ReplayData, pred: np.ndarray, used: np.ndarray) -> float | None:
    """Per-prediction Sharpe ratio of the strategy long on 1, short on 0, over the ``used`` rows."""
    if data.ret is None or int(used.sum()) < 2:
        return None
    strat = np.where(pred[used] == 1, data.ret[used], -data.ret[used])
    sd = float(np.std(strat, ddof=1))
    return float(np.mean(strat) / sd) if sd > 0 else 0.0


def baselines(data: ReplayData, used: np.ndarray, warm_end: datetime,
              label_delay: timedelta = timedelta(0)) -> dict[str, dict[str, Any]]:
    """Trivial predictors scored on the ``used`` rows (the policy's own): does the model have skill?

    ``majority``: the class most frequent among the warm-up's labels known at its end (the
    training window of the first model; "up" on a tie); ``always_up`` (only with returns):
    predict 1 every time, i.e. hold the asset. Each: ``{label, predicts, accuracy, sharpe}``.
    """
    known = data.ts + label_delay.total_seconds() <= warm_end.timestamp()
    ys = data.y[known]
    majority = int(ys.mean() >= 0.5) if ys.size else 1
    out: dict[str, dict[str, Any]] = {}
    for key, label, cls in (("majority", f"majority class ({majority}, the warm-up's)", majority),
                            ("always_up", "always up", 1)):
        if key == "always_up" and data.ret is None:
            continue
        pred = np.full(len(data), cls, dtype=np.int8)
        n = int(used.sum())
        acc = float((pred[used] == data.y[used]).mean()) if n else None
        out[key] = {"label": label, "predicts": cls, "accuracy": _num(acc), "sharpe": _num(_sharpe(data, pred, used))}
    return out


def policy_report(data: ReplayData, outcome: ReplayOutcome, opts: ReplayOptions) -> dict[str, Any]:
    """One policy's object of ``report.json`` (see the schema in :mod:`retrain.backtest`)."""
    model = outcome.model
    pred = outcome.pred
    used = (pred >= 0) & (data.ts >= outcome.warm_end.timestamp())
    hit = pred == data.y
    n = int(used.sum())
    accuracy = float(hit[used].mean()) if n else None
    sharpe = _sharpe(data, pred, used)
    trivial = baselines(data, used, outcome.warm_end, opts.label_delay)
    best = max((b["accuracy"] for b in trivial.values() if b["accuracy"] is not None), default=None)

    with outcome.ctx.store.tx() as tx:
        requests = tx.requests.newest(model, limit=1_000_000)
        req_by_id = {r.id: r for r in requests}
        decisions = tx.decisions.newest(model, limit=1_000_000)
        versions = tx.versions.all(model)
        history = tx.aliases.history(model, limit=1_000_000)
        runs = tx.runs.newest(model, limit=1_000_000)
        actual = [c for c in tx.ledger.entries() if c.kind == "actual" and c.model == model]
        drift = [_drift_entry(r.at, r.version, r.report) for r in tx.monitoring.drift_reports(model)]

        triggers = {k.value: 0 for k in TriggerKind}
        for r in requests:
            triggers[r.trigger] = triggers.get(r.trigger, 0) + 1

        run_names = {r.id: f"({r.candidate_version})" if r.candidate_version else "(not trained yet)" for r in
                     tx.runs.newest(model, limit=1_000_000)}
        decision_list = []
        # Ids are random: order by what was decided, so that the same replay lists them the same way.
        for d in sorted(decisions, key=lambda d: (d.decided_at, d.trigger, d.verdict, d.summary or "")):
            req = req_by_id.get(d.request_id)
            decision_list.append({
                "time": _iso(d.decided_at), "trigger": d.trigger, "verdict": d.verdict,
                "reasons": _reasons(d.rules or [], d.verdict, run_names),
                "request": req.reason if req is not None else None,
                "defer_until": _iso(d.defer_until), "resolved_by": d.resolved_by,
            })

        started = [r for r in runs if r.started_at is not None]
        initial = [r for r in started if (req_by_id.get(r.request_id) is not None
                                          and req_by_id[r.request_id].reason.startswith(INITIAL_REASON))]
        run_by_id = {r.id: r for r in runs}
        version_list = []
        promotions = rollbacks = 0
        for v in versions:
            promoted = next((h.at for h in history if h.alias == "production" and h.to_version == v.version), None)
            rolled = next((h.at for h in history
                           if h.from_version == v.version and "rollback" in (h.reason or "").lower()), None)
            if rolled is None and v.status == "rolled_back":
                rolled = v.created_at
            run = run_by_id.get(v.run_id) if v.run_id else None
            holdout = (v.metrics or {}).get("holdout") or {}
            promotions += promoted is not None
            rollbacks += rolled is not None
            version_list.append({
                "version": v.version, "trained_at": _iso(v.created_at), "promoted_at": _iso(promoted),
                "rejected": v.status in ("rejected", "withdrawn"), "rolled_back": rolled is not None,
                "rolled_back_at": _iso(rolled),
                "status": v.status, "trigger": run.trigger if run else None, "cost_usd": _num(v.cost_usd, 8),
                "holdout_accuracy": _num(holdout.get("accuracy")), "data_rows": v.data_rows,
                "data_end": _iso(v.data_end),
                # Why it went no further (holdout, shadow or a stage), when it did not.
                "validation": (run.error if run is not None and run.error and promoted is None else None),
            })

    notes = list(outcome.notes)
    cfg = outcome.config.model(model)
    gaps = np.diff(data.ts)
    notes += rate_notes(cfg, rows_per_minute=data.rows_per_minute, label_delay=opts.label_delay,
                        after_warmup=max(data.end - outcome.warm_end, timedelta(0)),
                        row_gap=timedelta(seconds=float(np.median(gaps)) if gaps.size else 0.0),
                        every=outcome.spec.period if outcome.spec.kind == "every" else None, accuracy=accuracy,
                        approve_after=opts.approve_after, retrains=outcome.spec.kind != "never")
    if promotions == 0:
        failed = [r.error for r in started if r.error]
        notes.append("no model ever served: " + (f"the training failed ({failed[0]})" if failed else
                                                 "nothing was trained after the warm-up"))
    width = timeline_width(data)
    report: dict[str, Any] = {
        "policy": outcome.spec.label,
        "partial": outcome.partial,
        "replayed_until": _iso(outcome.replayed_until),
        "rows": len(data),
        "predictions": n,
        "accuracy": _num(accuracy),
        "accuracy_by_period": _accuracy_bins(data, hit, used, opts.period),
        "sharpe": _num(sharpe),
        "baselines": trivial,
        "skill": None if accuracy is None or best is None else _num(accuracy - best),
        "retrainings": len(started) - len(initial),
        "trainings": len(started),
        "promotions": promotions,
        "rollbacks": rollbacks,
        "cost_usd": _num(sum(c.amount_usd for c in actual), 8),
        "triggers": triggers,
        "approvals": outcome.approvals,
        "decisions": decision_list,
        "versions": version_list,
        "drift": drift,
        "timeline": _accuracy_bins(data, hit, used, width),
        "timeline_width_s": width.total_seconds(),
        "elapsed_s": round(outcome.elapsed_s, 3),
        "notes": notes,
    }
    report["notes"] += outcome_notes(report, trivial)
    return report


def _drift_entry(at: datetime, version: str | None, report: dict) -> dict[str, Any]:
    feats = report.get("features") or []
    stats = [f["statistic"] for f in feats if f.get("statistic") is not None and f.get("test") == "ks"]
    if not stats:
        stats = [f["statistic"] for f in feats if f.get("statistic") is not None]
    return {"time": _iso(at), "version": version, "drifted": bool(report.get("drifted_features")),
            "share_drifted": _num(report.get("share_drifted")), "drifted_features": report.get("drifted_features", []),
            "mean_statistic": _num(float(np.mean(stats)) if stats else None),
            "max_statistic": _num(max(stats) if stats else None), "rows": report.get("n_current")}


def data_drift(data: ReplayData, warm_end: datetime, width: timedelta, alpha: float = 0.05) -> list[dict[str, Any]]:
    """The data's drift after the warm-up, bin by bin, against the warm-up rows (same for every policy)."""
    from retrain.core.drift import detect_drift

    cut = int(np.searchsorted(data.ts, warm_end.timestamp(), side="left"))
    if cut < 20:
        return []
    ref = data.X[:cut]
    out = []
    for start, end, lo, hi in bins(data, width, first=warm_end.timestamp()):
        lo = max(lo, cut)
        if hi - lo < 100:
            continue
        rep = detect_drift(ref, data.X[lo:hi], list(data.features), alpha=alpha)
        entry = _drift_entry(datetime.fromtimestamp(start, tz=timezone.utc), None, rep.to_json())
        entry.update({"start": _iso(start), "end": _iso(end)})
        del entry["time"], entry["version"]
        out.append(entry)
    return out
