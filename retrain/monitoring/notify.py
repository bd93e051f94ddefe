"""Notifications: tell people what happened, why, and what to do, through apprise.

An event worth a message (:mod:`retrain.core.notices`) reaches the outbox
(:func:`retrain.monitoring.events.enqueue_notice`) in the
transaction of the change it reports. The ``retrain.notify`` task then records one
delivery per matching target (unique per event and target, so a redelivered message
never notifies twice), claims it, sends it outside any transaction and records the
result. A failed delivery is retried by ``retrain.notify_retry`` (on beat) with
exponential backoff, and kept with its error when it gives up: ``retrain notifications``
lists both. Nothing here can fail or slow down the step that caused the event: that
step only wrote an outbox row.

Sending goes through a :data:`Sender` (``apprise`` by default): ``ctx.cache.slot(SENDER, ...)``
before the first delivery swaps it, e.g. in a benchmark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from retrain.context import CacheSlot, Context
from retrain.core.notices import NotifySettings
from retrain.core.payloads import NotifyPayload, SweepPayload
from retrain.core.records import NotificationRecord

__all__ = ["Sender", "SENDER", "apprise_sender", "render", "notify", "retry_due", "NotifyResult"]

log = logging.getLogger("retrain.notifications")

#: (apprise URL, title, body) -> None on success, else the error in one line.
Sender = Callable[[str, str, str], "str | None"]

_TITLES = {
    "approval": "{model}: retraining waits for your approval",
    "promotion": "{model}: {subject} is now production",
    "rollback": "{model}: rolled back",
    "emergency": "{model}: EMERGENCY retraining requested",
    "budget": "{model}: retraining held by the budget",
    "dead_run": "{model}: training run gave up",
    "paused": "{model}: automatic retraining paused",
}


def render(p: NotifyPayload, settings: NotifySettings) -> tuple[str, str]:
    """A short title and body: what happened, why, what to do, and the dashboard's link."""
    f = p.facts
    model = p.model or "all models"
    title = "[retrain] " + _TITLES.get(p.event, "{model}: " + p.event).format(model=model, subject=p.subject or "")
    what, todo = p.summary, ""
    if p.event == "approval":
        rid = f.get("request_id") or p.subject or "ID"
        todo = f"retrain approve {rid}   (or: retrain reject {rid} --reason '...')"
    elif p.event == "budget":
        exhausted = isinstance(f.get("value"), int | float) and isinstance(f.get("limit"), int | float) \
            and f["value"] >= f["limit"]
        what = (f"{'budget exhausted' if exhausted else 'budget deferral'} ({f.get('rule')}: "
                f"{f.get('detail') or ''}); {p.summary}")
        todo = (f"waits until {f['defer_until']}" if f.get("defer_until") else "nothing runs until the budget resets") \
            + f"; to spend anyway: retrain train {model} --override-budget --reason '...'"
    elif p.event == "rollback":
        figures = f.get("figures") or {}
        nums = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in list(figures.items())[:6]
                         if isinstance(v, int | float | str))
        what = p.summary + (f" (figures: {nums})" if nums else "")
        todo = f"check the cause; retrain history {model} shows every alias move"
    elif p.event == "emergency":
        todo = f"watch the run (retrain status); severity {f.get('severity')}; approval is bypassed"
    elif p.event == "dead_run":
        todo = f"read the error (retrain audit {model}); a new request may retrain once the cause is fixed"
    elif p.event == "paused":
        todo = f"retrain resume {p.model}" if p.model else "retrain resume --all"
    elif p.event == "promotion":
        todo = f"nothing; to go back: retrain rollback {model}"
    lines = [f"What: {what}", f"When: {p.at}"]
    if todo:
        lines.append(f"Do: {todo}")
    if settings.dashboard_url:
        lines.append("Dashboard: " + settings.dashboard_url.replace("{model}", p.model or ""))
    lines.append(f"Event: {p.event_id}")
    return title, "\n".join(lines)


def apprise_sender(timeout_s: float = 10.0) -> Sender:
    """Send through apprise; its log lines say why a delivery failed."""

    def send(url: str, title: str, body: str) -> str | None:
        import apprise

        ap = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))
        if not ap.add(url):
            return "apprise does not understand the target URL (check its scheme)"
        with apprise.LogCapture(level=apprise.logging.WARNING) as logs:
            ok = ap.notify(title=title, body=body)
            captured = logs.getvalue().strip()
        if ok:
            return None
        return (captured.splitlines()[-1] if captured else "delivery failed")[:500]

    return send


#: The process's sender (apprise by default); a benchmark or a test may fill the slot with its own first.
SENDER: CacheSlot[Sender] = CacheSlot("notifications: the sender")


def _sender(ctx: Context) -> Sender:
    return ctx.cache.slot(SENDER, apprise_sender)


@dataclass
class NotifyResult:
    delivered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def notify(ctx: Context, p: NotifyPayload) -> NotifyResult:
    """Deliver one event to every target that wants it, once per (event, target)."""
    out = NotifyResult()
    settings = ctx.config.notify
    # The backtester replays history through the same steps: it must never message anyone.
    if ctx.worker_id == "backtest":
        return out
    targets = [t for t in settings.targets if t.wants(p.event, p.model)]
    if not targets:
        return out
    title, body = render(p, settings)
    now = ctx.now()
    ids = []
    with ctx.store.tx() as tx:
        for t in targets:
            rec = tx.notifications.add(event_id=p.event_id, target=t.name, event=p.event, model=p.model,
                                       subject=p.subject, title=title, body=body, now=now)
            rec = rec or tx.notifications.get(p.event_id, t.name)
            if rec is not None:
                ids.append(rec.id)
    _deliver(ctx, ids, settings, out)
    return out


def retry_due(ctx: Context, _p: SweepPayload | None = None) -> NotifyResult:
    """Try again the deliveries whose backoff is over (and claims left by a worker that died)."""
    out = NotifyResult()
    with ctx.store.tx() as tx:
        ids = tx.notifications.due(ctx.now(), limit=200)
    _deliver(ctx, ids, ctx.config.notify, out)
    return out


def _deliver(ctx: Context, ids: list[int], settings: NotifySettings, out: NotifyResult) -> None:
    if not ids:
        return
    now = ctx.now()
    with ctx.store.tx() as tx:
        claimed = tx.notifications.claim(ids, now, now + timedelta(seconds=settings.claim_s))
    claimed_ids = {r.id for r in claimed}
    out.skipped += [str(i) for i in ids if i not in claimed_ids]
    urls = {t.name: t.url for t in settings.targets}
    send = _sender(ctx)
    for rec in claimed:
        error = _send_one(send, urls.get(rec.target), rec)
        done = ctx.now()
        wait = None if error is None else settings.backoff(rec.attempts + 1)
        with ctx.store.tx() as tx:
            tx.notifications.finish(rec.id, delivered=error is None, now=done, error=error,
                                    next_attempt_at=done + timedelta(seconds=wait) if wait is not None else None)
        label = f"{rec.target}:{rec.event}:{rec.event_id[:8]}"
        if error is None:
            out.delivered.append(label)
            log.info("notification delivered", extra={"model": rec.model, "event": rec.event, "target": rec.target})
        else:
            out.failed.append(label)
            log.warning("notification to %s failed (attempt %d): %s%s", rec.target, rec.attempts + 1, error,
                        "" if wait is not None else "; giving up", extra={"model": rec.model, "event": rec.event})


def _send_one(send: Sender, url: str | None, rec: NotificationRecord) -> str | None:
    if url is None:
        return f"target {rec.target!r} is no longer in the [notify] section"
    try:
        return send(url, rec.title, rec.body)
    except Exception as exc:  # noqa: BLE001 - a sender's bug must not lose the delivery: it is retried
        return f"{type(exc).__name__}: {exc}"[:500]
