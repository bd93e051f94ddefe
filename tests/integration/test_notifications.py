"""Notifications against a real local webhook receiver and a real local SMTP server (aiosmtpd)."""

from __future__ import annotations

import http.server
import json
import threading
from datetime import timedelta

import pytest

from tests.conftest import free_port, make_context

pytestmark = pytest.mark.integration


class Webhook:
    """A real HTTP server on 127.0.0.1 that keeps every JSON body posted to it."""

    def __init__(self, port: int) -> None:
        self.port, self.got, self.server = port, [], None

    def start(self):
        got = self.got

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def smtp():
    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self):
            self.got = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            self.got.append(envelope.content.decode(errors="replace"))
            return "250 OK"

    h = Handler()
    c = Controller(h, hostname="127.0.0.1", port=free_port())
    c.start()
    yield c, h
    c.stop()


def _ctx(pg_url, tmp_path, hook_port, smtp_port):
    from retrain.config import load_config
    from tests.conftest import EXAMPLE_CONFIG

    cfg = load_config(EXAMPLE_CONFIG)
    notify = {"dashboard_url": "https://grafana.example/d/retrain?var-model={model}", "backoff_s": 30,
              "targets": [{"name": "hook", "url": f"json://127.0.0.1:{hook_port}/hook"},
                          {"name": "mail", "events": ["rollback"],
                           "url": f"mailto://127.0.0.1:{smtp_port}?from=retrain@example.com&to=ops@example.com"
                                  "&mode=insecure"}]}
    cfg = cfg.model_copy(update={"notify": type(cfg.notify).model_validate(notify)})
    return make_context(pg_url, tmp_path, config=cfg)


def _plain(raw: str) -> str:
    import email

    msg = email.message_from_string(raw)
    part = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    return part.get_payload(decode=True).decode()


def _record_events(ctx):
    # What the decision and the rollout write: the audit events (and, in the same transaction, the outbox rows).
    now = ctx.now()
    with ctx.store.tx() as tx:
        tx.audit.record(now, "decision", "policy", "manual request for direction: waits for approval (first week)",
                        model="direction", subject="d-1",
                        data={"request_id": "req-12345678", "verdict": "pending_approval", "rules": []})
        tx.audit.record(now, "rollback", "rollout", "direction canary 1.1.0 rolled back automatically at 10% "
                        "(production 1.0.0 serves all traffic): accuracy -12% vs production", model="direction",
                        subject="1.1.0", data={"figures": {"accuracy_delta": -0.12}, "share_pct": 10.0})
        tx.audit.record(now, "run", "worker", "training started", model="direction", subject="r1", data={})


def test_each_event_is_delivered_once_to_the_targets_that_want_it(pg_url, tmp_path, smtp):
    from retrain.steps.dispatch import drain, run_step
    from retrain.tasks import NOTIFY

    # Given a webhook and an SMTP server, and a model file whose [notify] sends everything to the hook, rollbacks by mail
    controller, mail = smtp
    hook = Webhook(free_port()).start()
    try:
        ctx = _ctx(pg_url, tmp_path, hook.port, controller.port)
        # When a decision waits for approval and a canary is rolled back (and a run starts: no message)
        _record_events(ctx)
        sent = []
        drain(ctx, on_result=lambda task, r: sent.append((task, r)))
        # Then the hook got both events, the mail server the rollback only, each once
        titles = sorted(m["title"] for m in hook.got)
        assert titles == ["[retrain] direction: retraining waits for your approval", "[retrain] direction: rolled back"]
        approval = next(m for m in hook.got if "approval" in m["title"])
        assert "retrain approve req-12345678" in approval["message"]
        assert "https://grafana.example/d/retrain?var-model=direction" in approval["message"]
        assert len(mail.got) == 1
        text = _plain(mail.got[0])
        assert "rolled back" in text and "accuracy_delta -0.12" in text
        # When the outbox delivers the same messages again (at least once)
        with ctx.store.tx() as tx:
            rows = tx.notifications.newest()
        assert {(r.target, r.status) for r in rows} == {("hook", "delivered"), ("mail", "delivered")} and len(rows) == 3
        for task, _ in sent:
            assert task == NOTIFY
        payloads = []
        with ctx.store.tx() as tx:
            from sqlalchemy import text
            payloads = [p for (p,) in tx.s.execute(text("SELECT payload FROM outbox WHERE task = :t"), {"t": NOTIFY})]
        for p in payloads:
            run_step(ctx, NOTIFY, p)
        # Then nobody hears twice
        assert len(hook.got) == 2 and len(mail.got) == 1
    finally:
        hook.stop()


def test_a_receiver_that_is_down_gets_the_message_after_it_comes_back(pg_url, tmp_path, smtp):
    from retrain.monitoring.notify import retry_due
    from retrain.steps.dispatch import drain

    # Given a webhook that is down (its port closed)
    controller, mail = smtp
    port = free_port()
    ctx = _ctx(pg_url, tmp_path, port, controller.port)
    # When events are recorded and delivered
    t0 = ctx.now()
    _record_events(ctx)
    assert (ctx.now() - t0) < timedelta(seconds=1)
    drain(ctx)
    # Then the failure is kept, with its error and a retry time, and the mail still went
    with ctx.store.tx() as tx:
        failing = tx.notifications.newest(status=["retrying", "failed"])
    assert {r.target for r in failing} == {"hook"} and len(failing) == 2
    assert all(r.attempts == 1 and r.last_error and r.next_attempt_at for r in failing)
    assert len(mail.got) == 1
    # When a retry comes before the backoff is over, nothing is sent
    assert retry_due(ctx).delivered == []
    # When the receiver comes back and the backoff is over
    hook = Webhook(port).start()
    try:
        ctx.clock.advance(timedelta(seconds=31))
        out = retry_due(ctx)
        # Then each message arrives once, and is marked delivered
        assert len(out.delivered) == 2 and len(hook.got) == 2
        assert retry_due(ctx).delivered == []
        with ctx.store.tx() as tx:
            assert {r.status for r in tx.notifications.newest()} == {"delivered"}
    finally:
        hook.stop()


def test_the_step_that_causes_an_event_never_waits_for_the_delivery(pg_url, tmp_path, smtp):
    import socket
    import time

    # Given a receiver that accepts connections and never answers
    controller, _ = smtp
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(5)
    try:
        ctx = _ctx(pg_url, tmp_path, hang.getsockname()[1], controller.port)
        # When a step records events (as the decision does), Then its transaction commits at once:
        # the event is only an outbox row, delivered by another task
        t = time.perf_counter()
        _record_events(ctx)
        assert time.perf_counter() - t < 2.0
        with ctx.store.tx() as tx:
            assert len(tx.outbox.pending()) == 2
    finally:
        hang.close()
