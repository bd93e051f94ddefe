"""The trading app's client: report predictions and outcomes, ask for retrainings.

Reporting never blocks the trading thread: a call appends to a bounded buffer and
returns; a background flusher joins outcomes to their predictions by id and sends
column-oriented batches to the ``retrain.ingest`` task by name (JSON, no import of
``workers``). When the broker is down, batches wait in a bounded retry queue; rows
that must be dropped are counted, logged and reported with the next batch.

Example
-------
>>> client = RetrainClient("redis://127.0.0.1:6379/0")            # doctest: +SKIP
>>> client.report_prediction("direction", "p-1", [0.1] * 8, 1, version="1.0.0")  # doctest: +SKIP
>>> client.report_outcome("direction", "p-1", label=1, ret=0.002)  # doctest: +SKIP
>>> client.request_retraining("direction", "new data from the vendor")  # doctest: +SKIP
>>> client.close()                                                   # doctest: +SKIP
"""

from __future__ import annotations

import collections
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from retrain.clock import Clock, SystemClock, monotonic

__all__ = ["RetrainClient", "ClientStats", "Sender", "kombu_sender"]

log = logging.getLogger("retrain.client")

#: ``sender(task_name, payload, queue, priority)``; raises when the broker is unreachable.
Sender = Callable[[str, dict, str, int], None]


@dataclass(frozen=True)
class ClientStats:
    buffered: int
    pending_predictions: int
    batches_waiting: int
    sent_rows: int
    sent_batches: int
    dropped_rows: int
    send_errors: int


def kombu_sender(broker_url: str, *, connect_timeout_s: float = 2.0) -> Sender:
    """A sender that publishes Celery protocol-2 task messages with kombu (no Celery import).

    JSON only; one connection reused under a lock; fails fast when the broker is down
    so the client can keep the batch and retry later.
    """
    import os
    import socket

    from kombu import Connection, Exchange

    from retrain.queues import broker_priority, kombu_queues, transport_options

    queues = {q.name: q for q in kombu_queues(broker_url)}
    origin = f"{os.getpid()}@{socket.gethostname()}"
    lock = threading.Lock()
    state: dict[str, Any] = {}

    def producer():
        if "producer" not in state:
            conn = Connection(broker_url, connect_timeout=connect_timeout_s,
                              transport_options=transport_options(broker_url))
            conn.ensure_connection(max_retries=1, timeout=connect_timeout_s)
            state["conn"], state["producer"] = conn, conn.Producer(serializer="json")
        return state["producer"]

    def send(task: str, payload: dict, queue: str, priority: int) -> None:
        task_id = str(uuid.uuid4())
        headers = {"lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None,
                   "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
                   "root_id": task_id, "parent_id": None, "argsrepr": f"({payload.get('batch_id', '')!r},)",
                   "kwargsrepr": "{}", "origin": origin, "ignore_result": True}
        body = ([payload], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
        q = queues[queue]
        with lock:
            try:
                producer().publish(body, exchange=q.exchange, routing_key=queue, serializer="json",
                                   headers=headers, correlation_id=task_id,
                                   priority=broker_priority(priority, broker_url),
                                   delivery_mode=2, declare=[q], retry=True,
                                   retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                                                 "interval_max": 0.5})
            except Exception:
                conn = state.pop("conn", None)
                state.pop("producer", None)
                if conn is not None:
                    try:
                        conn.release()
                    except Exception:  # already broken; nothing more to release
                        pass
                raise

    return send


class RetrainClient:
    """Buffered, thread-safe reporting for one process of the trading app.

    Parameters
    ----------
    broker_url: the Celery broker (ignored when ``sender`` is given).
    batch_size: rows per ingest message; a full batch is sent at once.
    flush_interval_s: the longest a row waits in the buffer.
    max_buffer: rows held before new ones are dropped (and counted).
    max_waiting_batches: batches kept while the broker is down; the oldest are dropped past it.
    prediction_ttl_s: how long a prediction waits for its outcome before it is sent unlabelled.
    max_pending_predictions: predictions held for joining; the oldest are sent unlabelled past it.
    """

    def __init__(self, broker_url: str | None = None, *, sender: Sender | None = None, batch_size: int = 2000,
                 flush_interval_s: float = 1.0, max_buffer: int = 200_000, max_waiting_batches: int = 500,
                 prediction_ttl_s: float = 3600.0, max_pending_predictions: int = 1_000_000,
                 clock: Clock | None = None, start: bool = True) -> None:
        if sender is None:
            if not broker_url:
                raise ValueError("RetrainClient needs a broker_url or a sender")
            sender = kombu_sender(broker_url)
        self._send = sender
        self._clock = clock or SystemClock()
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self.max_waiting_batches = max_waiting_batches
        self.prediction_ttl_s = prediction_ttl_s
        self.max_pending_predictions = max_pending_predictions
        # deque.append is atomic in CPython: the hot path takes no lock.
        self._buffer: collections.deque = collections.deque()
        self._pending: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self._waiting: collections.deque[tuple[str, dict]] = collections.deque()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sent_rows = self._sent_batches = self._dropped = self._errors = 0
        self._unreported_drops = 0
        self._next_retry = 0.0
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="retrain-client-flusher", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ hot path
    def report_prediction(self, model: str, prediction_id: str, features: Sequence[float], prediction: int,
                          version: str, ts: float | None = None) -> None:
        """Record a prediction; its outcome follows with :meth:`report_outcome`."""
        if len(self._buffer) >= self.max_buffer:
            self._dropped += 1
            self._unreported_drops += 1
            return
        self._buffer.append(("p", model, prediction_id, features, prediction, version, ts))

    def report_outcome(self, model: str, prediction_id: str, label: int, ret: float | None = None) -> None:
        """Record the realized label (and the asset's return) of an earlier prediction."""
        if len(self._buffer) >= self.max_buffer:
            self._dropped += 1
            self._unreported_drops += 1
            return
        self._buffer.append(("o", model, prediction_id, label, ret))

    def report(self, model: str, prediction_id: str, features: Sequence[float], prediction: int, version: str,
               label: int, ret: float | None = None, ts: float | None = None) -> None:
        """A prediction and its outcome at once (when the label is already known)."""
        if len(self._buffer) >= self.max_buffer:
            self._dropped += 1
            self._unreported_drops += 1
            return
        self._buffer.append(("l", model, prediction_id, features, prediction, version, ts, label, ret))

    # ------------------------------------------------------------------ control
    def request_retraining(self, model: str, reason: str, *, requested_by: str = "trading-app",
                           approved_by: str | None = None, override_budget: bool = False,
                           override_reason: str | None = None) -> None:
        """Ask for a retraining now (a manual trigger); the decision still applies every rule.

        ``approved_by`` records a person's approval with the request (the first-week gate);
        ``override_budget`` skips the budget and ROI rules and needs ``override_reason``.
        """
        payload = {"v": 1, "model": model, "reason": reason, "trigger": "manual", "requested_by": requested_by,
                   "override_budget": override_budget}
        if approved_by:
            payload["approved_by"] = approved_by
        if override_reason:
            payload["override_reason"] = override_reason
        self._send("retrain.request_retraining", payload, "decision", 3)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Send everything buffered (predictions still waiting for outcomes stay). True if all went out."""
        deadline = monotonic() + timeout_s
        self._drain(force=True)
        while self._waiting and monotonic() < deadline:
            self._next_retry = 0.0
            self._send_waiting()
            if self._waiting:
                self._stop.wait(0.2)
        return not self._waiting and not self._buffer

    def close(self, timeout_s: float = 10.0) -> ClientStats:
        """Send what can be sent (pending predictions unlabelled), stop the flusher."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        self._drain(force=True, expire_all=True)
        self.flush(timeout_s)
        lost = sum(len(p["id"]) for _, p in self._waiting)
        if lost:
            self._dropped += lost
            log.error("retrain client closing with %d rows it could not send", lost)
        return self.stats

    @property
    def stats(self) -> ClientStats:
        return ClientStats(len(self._buffer), len(self._pending), len(self._waiting), self._sent_rows,
                           self._sent_batches, self._dropped, self._errors)

    # ------------------------------------------------------------------ flusher
    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.flush_interval_s)
            try:
                self._drain(force=True)
            except Exception:  # the flusher must outlive any one bad batch
                log.exception("retrain client flush failed")

    def _drain(self, force: bool = False, expire_all: bool = False) -> None:
        with self._lock:
            rows: dict[str, dict[str, list]] = {}
            now_ts = self._clock.now().timestamp()
            buf = self._buffer
            while buf:
                item = buf.popleft()
                kind = item[0]
                if kind == "p":
                    _, model, pid, x, pred, version, ts = item
                    self._pending[pid] = (model, x, pred, version, ts if ts is not None else now_ts)
                    if len(self._pending) > self.max_pending_predictions:
                        old_id, old = self._pending.popitem(last=False)
                        self._add(rows, old[0], old_id, old[3], old[4], old[1], old[2], None, None)
                elif kind == "o":
                    _, model, pid, label, ret = item
                    hit = self._pending.pop(pid, None)
                    if hit is None:
                        self._add(rows, model, pid, "", now_ts, None, None, label, ret)
                    else:
                        self._add(rows, hit[0], pid, hit[3], hit[4], hit[1], hit[2], label, ret)
                else:
                    _, model, pid, x, pred, version, ts, label, ret = item
                    self._add(rows, model, pid, version, ts if ts is not None else now_ts, x, pred, label, ret)
            cutoff = now_ts - self.prediction_ttl_s
            while self._pending:
                pid, p = next(iter(self._pending.items()))
                if not expire_all and p[4] > cutoff:
                    break
                self._pending.popitem(last=False)
                self._add(rows, p[0], pid, p[3], p[4], p[1], p[2], None, None)
            for model, cols in rows.items():
                for start in range(0, len(cols["id"]), self.batch_size):
                    self._queue_batch(model, {k: v[start:start + self.batch_size] for k, v in cols.items()})
        self._send_waiting()

    @staticmethod
    def _add(rows, model, pid, version, ts, x, pred, label, ret) -> None:
        cols = rows.get(model)
        if cols is None:
            cols = rows[model] = {"id": [], "version": [], "ts": [], "x": [], "prediction": [], "label": [], "ret": []}
        cols["id"].append(str(pid))
        cols["version"].append(version)
        cols["ts"].append(float(ts))
        cols["x"].append(list(x) if x is not None else None)
        cols["prediction"].append(pred)
        cols["label"].append(label)
        cols["ret"].append(ret)

    def _queue_batch(self, model: str, cols: dict[str, list]) -> None:
        payload = {"v": 1, "batch_id": uuid.uuid4().hex, "model": model, **cols}
        self._waiting.append((model, payload))
        while len(self._waiting) > self.max_waiting_batches:
            _, dropped = self._waiting.popleft()
            n = len(dropped["id"])
            self._dropped += n
            self._unreported_drops += n
            log.error("retrain client dropped a batch of %d rows: broker unreachable and %d batches waiting",
                      n, self.max_waiting_batches)

    def _send_waiting(self) -> None:
        # One sender at a time: flush() on the caller's thread and the flusher must not
        # both send the head batch (a duplicate) and then both pop (a loss).
        with self._send_lock:
            self._send_waiting_locked()

    def _send_waiting_locked(self) -> None:
        if monotonic() < self._next_retry:
            return
        while self._waiting:
            model, payload = self._waiting[0]
            if self._unreported_drops:
                payload = {**payload, "client_dropped": self._unreported_drops}
            try:
                self._send("retrain.ingest", payload, "monitoring", 5)
            except Exception as exc:  # broker down: keep the batch, back off
                self._errors += 1
                self._next_retry = monotonic() + min(30.0, 0.5 * 2 ** min(self._errors, 6))
                log.warning("retrain client could not send (%s); %d batches waiting", exc, len(self._waiting))
                return
            self._waiting.popleft()
            self._unreported_drops -= payload.get("client_dropped", 0)
            self._sent_rows += len(payload["id"])
            self._sent_batches += 1
            self._errors = 0
