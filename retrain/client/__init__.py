"""The trading app's client: report predictions and outcomes, ask for retrainings.

Reporting never blocks the trading thread: a call appends one tuple to a bounded
buffer and returns (no lock, no I/O, about half a microsecond). A background
flusher wakes when a batch worth of rows is buffered or ``flush_interval_s`` has
passed, joins outcomes to their predictions by id, and sends column-oriented
batches to the ``retrain.ingest`` task by name (JSON, no import of ``workers``).
Numeric columns travel packed (:mod:`retrain.core.columns`): encoding 40,000 floats as
JSON numbers would cost the flusher more than everything else together.

When the broker is down, batches wait in a bounded retry queue
(``max_waiting_batches``) and are retried with backoff; when the buffer or the
queue is full, rows are dropped, and every drop is counted (``stats``), logged,
and reported to the server with the next batch that gets through
(``client_dropped``, written to the audit trail by the ingest step).

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
import json
import logging
import math
import re
import threading
import uuid
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat, starmap
from numbers import Integral, Real
from operator import itemgetter
from typing import Any, NamedTuple

from retrain.core.clock import Clock, SystemClock, monotonic, timestamp_of
from retrain.core.columns import pack_f8
from retrain.tasks import INGEST, REQUEST_RETRAINING, ROUTES

__all__ = ["RetrainClient", "ClientStats", "Sender", "kombu_sender"]

log = logging.getLogger("retrain.client")

#: ``sender(task_name, payload, queue, priority)``; raises when the broker is unreachable. An ingest
#: payload may come packed already (:class:`EncodedIngest`, from the relay process).
Sender = Callable[[str, Any, str, int], None]

_NAN = float("nan")
_INTS, _STRS = {int}, {str}
_SELF = object()
# Fields of the buffered items (see RetrainClient's hot path).
_MODEL, _PID, _X, _PREDICTION, _VERSION, _TS = (itemgetter(i) for i in range(1, 7))
# Parts of the (item, gathered_ts) pairs that wait in _pending.
_FIRST, _SECOND = itemgetter(0), itemgetter(1)
_LABEL_O, _RET_O = itemgetter(3), itemgetter(4)
_LABEL_L, _RET_L = itemgetter(7), itemgetter(8)


#: The third part of a Celery protocol-2 body: no callbacks, no chain, no chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_EMBED_JSON = json.dumps(_EMBED, separators=(",", ":"))
_PACKED = ("ts", "x", "ret")


@dataclass(frozen=True, slots=True)
class EncodedIngest:
    """An ingest message whose Celery body is JSON already: sent as it is, never decoded
    (the relay's parent encodes each batch once; the relay process only publishes it).

    ``client_dropped`` is the drop count the body carries; a sender that must report
    more drops sends them in a message of their own (it cannot change the body).
    """

    body: bytes
    batch_id: str
    model: str
    rows: int
    client_dropped: int = 0


def encode_ingest(payload: dict) -> EncodedIngest:
    """The Celery body of ``retrain.ingest(payload)`` as kombu would send it, encoded once.

    The packed columns are base64, which JSON carries with nothing to escape: they are
    put in as they are, not scanned by the encoder (a third of the work otherwise). The
    ids and versions (plain ASCII strings, checked in one pass) are joined, and the 0/1
    predictions and labels written from a table: three times faster than the encoder.
    """
    packed = payload.get("n_features") is not None  # its columns are pack_f8's base64
    raw = {k: f'"{payload[k]}"' for k in _PACKED if _plain(payload.get(k), packed)}
    for k, write in _FAST_COLUMNS:
        text = write(payload.get(k))
        if text is not None:
            raw[k] = text
    rest = json.dumps({k: v for k, v in payload.items() if k not in raw}, separators=(",", ":"))
    if raw:
        sep = "," if len(rest) > 2 else ""
        rest = rest[:-1] + sep + ",".join(f'"{k}":{v}' for k, v in raw.items()) + "}"
    text = f"[[{rest}],{{}},{_EMBED_JSON}]"
    return EncodedIngest(text.encode("ascii"), str(payload.get("batch_id", "")), str(payload.get("model", "")),
                         len(payload.get("id", ())), int(payload.get("client_dropped", 0) or 0))


_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')
_SMALL_INT_JSON = {0: "0", 1: "1", None: "null"}


def _json_strings(col: Any) -> str | None:
    """A list of strings as JSON when none needs escaping (ASCII, no quote, backslash or
    control character), else None (the encoder does it)."""
    if type(col) is not list:
        return None
    try:
        whole = "".join(col)
    except TypeError:  # not all strings
        return None
    if not whole.isascii() or _NEEDS_ESCAPE.search(whole):
        return None
    return '["' + '","'.join(col) + '"]' if col else "[]"


def _json_small_ints(col: Any) -> str | None:
    """A list of 0, 1 and None as JSON, else None (the encoder does it)."""
    if type(col) is not list:
        return None
    try:
        return "[" + ",".join(map(_SMALL_INT_JSON.__getitem__, col)) + "]"
    except (KeyError, TypeError):  # other values, or unhashable ones
        return None


_FAST_COLUMNS = (("id", _json_strings), ("version", _json_strings), ("prediction", _json_small_ints),
                 ("label", _json_small_ints))


def _plain(v: Any, base64: bool = False) -> bool:
    # A string JSON holds verbatim: ASCII, printable, no quote, no backslash (base64 is; the
    # per-character printable scan, the one slow check, is skipped for what pack_f8 made).
    return (type(v) is str and v.isascii() and '"' not in v and "\\" not in v
            and (base64 or v.isprintable()))


def _carried(payload: Any) -> int:
    """The drop count a queued payload carries already."""
    if type(payload) is EncodedIngest:
        return payload.client_dropped
    return payload.get("client_dropped", 0)


class PredictionSink(NamedTuple):
    """The client's buffer, for a caller on the hot path (the router) to append to itself.

    Append ``("p", model, prediction_id, features, prediction, version, ts)``, exactly what
    :meth:`RetrainClient.report_prediction` appends, to ``buffer``; then call ``due()`` when
    ``len(buffer) >= limit[0]``. The saving is two Python calls per prediction, which the
    router bench shows on a loaded CPU cache; anything else should call ``report_prediction``.
    """

    buffer: collections.deque[Any]
    limit: Any  # a one-element array: the length at which a batch is due
    due: Callable[[], None]


@dataclass(frozen=True)
class ClientStats:
    """Counters of one client. ``dropped_rows`` is every row lost, for any reason."""

    buffered: int
    pending_predictions: int
    batches_waiting: int
    sent_rows: int
    sent_batches: int
    dropped_rows: int
    send_errors: int
    waiting_rows: int = 0


def kombu_sender(broker_url: str, *, connect_timeout_s: float = 2.0, amqp_max_priority: int = 0) -> Sender:
    """A sender that publishes Celery protocol-2 task messages with kombu (no Celery import).

    JSON only; one connection reused under a lock; fails fast when the broker is down
    so the client can keep the batch and retry later. On RabbitMQ a queue that already
    exists is used with whatever arguments it was declared with; a missing one is
    declared plain, or as a priority queue when ``amqp_max_priority`` > 0.
    """
    import os
    import socket

    from kombu import Connection

    from retrain.queues import broker_priority, declare_queues, kombu_queues, transport_options

    queues = {q.name: q for q in kombu_queues(broker_url, amqp_max_priority)}
    origin = f"{os.getpid()}@{socket.gethostname()}"
    lock = threading.Lock()
    state: dict[str, Any] = {}

    def producer():
        if "producer" not in state:
            conn = Connection(broker_url, connect_timeout=connect_timeout_s,
                              transport_options=transport_options(broker_url))
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.1, interval_max=0.2,
                                   timeout=connect_timeout_s)
            declare_queues(conn, queues.values())  # RabbitMQ: a queue declared by others is used as it is
            state["conn"], state["producer"] = conn, conn.Producer(serializer="json")
        return state["producer"]

    def send(task: str, payload: dict | EncodedIngest, queue: str, priority: int) -> None:
        task_id = str(uuid.uuid4())
        body: bytes | tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]
        if isinstance(payload, EncodedIngest):  # the body as it came: no decoding, no encoding
            body, batch_id = payload.body, payload.batch_id
            encoding = {"content_type": "application/json", "content_encoding": "utf-8"}
        else:
            body, batch_id = ([payload], {}, _EMBED), payload.get("batch_id", "")
            encoding = {"serializer": "json"}
        headers = {"lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None,
                   "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
                   "root_id": task_id, "parent_id": None, "argsrepr": f"({batch_id!r},)",
                   "kwargsrepr": "{}", "origin": origin, "ignore_result": True}
        q = queues[queue]
        with lock:
            try:
                producer().publish(body, exchange=q.exchange, routing_key=queue, **encoding,
                                   headers=headers, correlation_id=task_id,
                                   priority=broker_priority(priority, broker_url),
                                   delivery_mode=2, declare=[q], retry=True,
                                   retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                                                 "interval_max": 0.5})
            except Exception:  # whatever publish raised: the connection is suspect; drop it and raise the same
                conn = state.pop("conn", None)
                state.pop("producer", None)
                if conn is not None:
                    try:
                        conn.release()
                    except Exception:  # already broken; nothing more to release
                        pass
                raise

    return send


def _drop_notice(model: str) -> dict:
    """An ingest batch of no rows, to carry a drop count (``client_dropped`` is added when sent)."""
    return {"v": 1, "batch_id": uuid.uuid4().hex, "model": model, "id": [], "version": [], "ts": [], "x": [],
            "prediction": [], "label": [], "ret": []}


def _jsonable(v: Any) -> Any:
    # Rows on the slow path keep what they were given, as JSON: the server says what is wrong.
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, Real):
        f = float(v)
        return f if math.isfinite(f) else str(f)
    return str(v)


def _jsonable_int(v: Any) -> Any:
    """A prediction or label on the slow path: an int where the packed path's ``int()`` reads
    one without loss (True, numpy integers, 1.0), else as given. The ingest schema is strict:
    sent as 1.0 or true, a row the packed path carries would have its whole batch refused."""
    if isinstance(v, Integral) or (isinstance(v, float) and v.is_integer()):
        return int(v)
    return _jsonable(v)


def _width(x: Any) -> int:
    """The feature count of one reported row: a sequence, or packed float64 bytes (ModelRouter's form)."""
    return len(x) // 8 if type(x) is bytes else len(x)


def _packed_features(xs: Sequence[Any], width: int) -> array:
    """The rows' features as one float64 column; ValueError/TypeError when any row does not fit it."""
    kinds = set(map(type, xs))
    if bytes in kinds:
        if kinds != {bytes} or set(map(len, xs)) != {8 * width}:
            raise ValueError("rows of another form or width")
        x = array("d")
        x.frombytes(b"".join(xs))
        return x
    if not width or None in xs or set(map(len, xs)) != {width}:
        raise ValueError("rows of another width")
    return array("d", [v for row in xs for v in row])


def _unpacked(x: Any) -> Any:
    """A row's features as a list when they came packed (bytes), else as given."""
    if type(x) is bytes:
        try:
            return memoryview(x).cast("d").tolist()
        except TypeError:  # not whole float64 values: the server says what is wrong
            return [f"<{len(x)} bytes>"]
    return x


class _Batch:
    """Rows of one model being gathered into one ingest message.

    Packed (``n_features`` set): numeric columns in ``array('d')``, sent base64-packed.
    Otherwise one JSON list per row, for the rows the packed form cannot carry (no
    features, another feature count, values that are not numbers): the server checks
    them and dead-letters what is wrong, with the reason.
    """

    __slots__ = ("model", "n_features", "id", "version", "ts", "x", "prediction", "label", "ret")

    def __init__(self, model: str, n_features: int | None) -> None:
        self.model = model
        self.n_features = n_features
        packed = n_features is not None
        self.id: list[str] = []
        self.version: list[str] = []
        self.ts: array | list = array("d") if packed else []
        self.x: array | list = array("d") if packed else []
        self.prediction: list = []
        self.label: list = []
        self.ret: array | list = array("d") if packed else []

    def __len__(self) -> int:
        return len(self.id)

    def payload(self) -> dict[str, Any]:
        p: dict[str, Any] = {"v": 1, "batch_id": uuid.uuid4().hex, "model": self.model, "id": self.id,
                             "version": self.version, "prediction": self.prediction, "label": self.label}
        if self.n_features is not None:
            p.update(ts=pack_f8(self.ts), x=pack_f8(self.x), n_features=self.n_features, ret=pack_f8(self.ret))
        else:
            p.update(ts=self.ts, x=self.x, ret=self.ret)
        return p


class RetrainClient:
    """Buffered, thread-safe reporting for one process of the trading app.

    Parameters
    ----------
    broker_url: the Celery broker (ignored when ``sender`` is given).
    batch_size: rows per ingest message; a full batch wakes the flusher at once.
    flush_interval_s: the longest a row waits in the buffer.
    max_buffer: rows held before new ones are dropped (and counted).
    max_waiting_batches: batches kept while the broker is down; the oldest are dropped past it.
    prediction_ttl_s: how long a prediction waits for its outcome before it is sent unlabelled.
    max_pending_predictions: predictions held for joining; the oldest are sent unlabelled past it.
    retry_max_s: the longest wait between two attempts while the broker is down.
    mode: ``"thread"`` (default): a flusher thread of this process joins, packs and sends.
        ``"relay"``: the reporting call that finds a batch due packs it (a few
        microseconds a row) and hands it to a relay process (:mod:`retrain.client.relay`),
        which talks to the broker. Rows are marked due by age by the relay process, which
        lowers the calls' threshold in memory it shares with this one (a sender without
        ``due_limit`` leaves that to a timer thread of ours). Choose it when the process is
        busy with a model that releases and retakes the GIL often (most scikit-learn models
        do): there, every wake of a background thread costs milliseconds of CPU while it
        waits for the GIL. The sender must not block.
    idle_flush_s: relay mode: after how long without a report call a thread of ours sends
        what waits itself (an idle app); the rows of an app gone quiet wait at most about
        twice this long.

    Features are read when the rows are packed, not when ``report_*`` is called: do not
    change a features list after reporting it. Timestamps are epoch seconds.
    """

    def __init__(self, broker_url: str | None = None, *, sender: Sender | None = None, batch_size: int = 5000,
                 flush_interval_s: float = 1.0, max_buffer: int = 200_000, max_waiting_batches: int = 500,
                 prediction_ttl_s: float = 3600.0, max_pending_predictions: int = 1_000_000,
                 retry_max_s: float = 30.0, clock: Clock | None = None, mode: str = "thread",
                 idle_flush_s: float = 30.0, start: bool = True) -> None:
        if mode not in ("thread", "relay"):
            raise ValueError(f"mode must be 'thread' or 'relay', not {mode!r}")
        if sender is None:
            if not broker_url:
                raise ValueError("RetrainClient needs a broker_url or a sender")
            if mode == "relay":
                from retrain.client.relay import ProcessRelay

                sender = ProcessRelay(broker_url)
            else:
                from retrain.client.replay_sender import replaying_sender

                # Redis without persistence forgets what it held when it restarts: resend the
                # recent ingest batches then (ingest counts each batch id once).
                sender = replaying_sender(kombu_sender(broker_url), broker_url)
        if batch_size < 1 or max_buffer < 1 or max_waiting_batches < 1:
            raise ValueError("batch_size, max_buffer and max_waiting_batches must be >= 1")
        self.mode = mode
        self._inline = mode == "relay"
        self._broker_url = broker_url
        self._control_sender: Sender | None = None
        self._send = sender
        # Optional parts of a sender: work it could not finish at once, its own flush and close,
        # and a way to tell us of rows it lost (the relay process died holding them).
        self._pump = getattr(sender, "pump", None)
        self._sender_flush = getattr(sender, "flush", None)
        self._sender_close = getattr(sender, "close", None)
        if hasattr(sender, "on_lost"):
            sender.on_lost = self._drop
        self._clock = clock or SystemClock()
        self._timestamp = timestamp_of(self._clock)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self.max_waiting_batches = max_waiting_batches
        self.prediction_ttl_s = prediction_ttl_s
        self.max_pending_predictions = max_pending_predictions
        self.retry_max_s = retry_max_s
        # deque.append is atomic in CPython: the hot path takes no lock.
        self._buffer: collections.deque = collections.deque()
        # A prediction and its outcome are two items: a batch of joined rows is due at twice
        # batch_size items (never past max_buffer: the same check stands for both). In relay
        # mode the threshold is lowered to 0 every flush_interval_s, so the next call sends:
        # by the relay process, in memory it shares with us (no thread of ours wakes for it),
        # or else by our timer thread.
        self._wake_size = min(2 * batch_size, max_buffer)
        self._limit = memoryview(bytearray(8)).cast("q")
        shared_limit = getattr(sender, "due_limit", None) if self._inline else None
        self._sender_ticks = shared_limit is not None
        if shared_limit is not None:
            self._limit = shared_limit(flush_interval_s)
        self._limit[0] = self._wake_size
        self._drained_at = monotonic()
        self.idle_flush_s = idle_flush_s
        # id -> (prediction item, when gathered); insertion-ordered: the first is the oldest.
        self._pending: dict[str, tuple[tuple, float]] = {}
        self._waiting: collections.deque[tuple[dict[str, Any] | EncodedIngest, int]] = collections.deque()
        self._waiting_rows = 0
        self._width: dict[str, int] = {}
        # One lock for the flusher's side (drain and send); the reporting calls never take it.
        self._lock = threading.RLock()
        # Drops happen on the trading threads too: a tiny lock of their own keeps the count exact.
        self._drop_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sent_rows = self._sent_batches = self._dropped = self._errors = 0
        self._unreported_drops = 0
        self._next_retry = 0.0
        self._thread: threading.Thread | None = None
        if start:
            run, name = (self._tick, "retrain-client-timer") if self._inline else (self._run, "retrain-client-flusher")
            self._thread = threading.Thread(target=run, name=name, daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ hot path
    # Each call appends one tuple, ("p", model, id, x, prediction, version, ts), ("o", model,
    # id, label, ret) or ("l", model, id, x, prediction, version, ts, label, ret), and compares
    # the buffer's length with one threshold: the fewer objects a call touches, the less it
    # costs right after a model's predict has evicted them from the CPU's caches (reading
    # the clock alone costs a microsecond then). Past the threshold, _due does the rest.
    def report_prediction(self, model: str, prediction_id: str, features: Sequence[float], prediction: int,
                          version: str, ts: float | None = None) -> None:
        """Record a prediction; its outcome follows with :meth:`report_outcome`.

        ``features`` is the row's values, or their float64 bytes in native order (what
        :class:`~retrain.serving.ModelRouter` passes: ``row.tobytes()`` is a copy, and
        the cheapest form to pack). Without ``ts``, the row is stamped when the client
        gathers it (within ``flush_interval_s`` of the call).
        """
        buf = self._buffer
        buf.append(("p", model, prediction_id, features, prediction, version, ts))
        if len(buf) >= self._limit[0]:
            self._due()

    def report_outcome(self, model: str, prediction_id: str, label: int, ret: float | None = None) -> None:
        """Record the realized label (and the asset's return) of an earlier prediction."""
        buf = self._buffer
        buf.append(("o", model, prediction_id, label, ret))
        if len(buf) >= self._limit[0]:
            self._due()

    def report(self, model: str, prediction_id: str, features: Sequence[float], prediction: int, version: str,
               label: int, ret: float | None = None, ts: float | None = None) -> None:
        """A prediction and its outcome at once (when the label is already known)."""
        buf = self._buffer
        buf.append(("l", model, prediction_id, features, prediction, version, ts, label, ret))
        if len(buf) >= self._limit[0]:
            self._due()

    def prediction_sink(self) -> PredictionSink:
        """What :meth:`report_prediction` does, for a hot path to inline (see :class:`PredictionSink`)."""
        return PredictionSink(self._buffer, self._limit, self._due)

    def _due(self) -> None:
        """The threshold is reached: a batch is due (relay mode: pack and hand it over on this
        thread; else wake the flusher), and past ``max_buffer`` the newest rows are dropped."""
        if self._inline:
            if self._lock.acquire(blocking=False):  # else another thread is at it
                try:
                    self._limit[0] = self._wake_size
                    self._drained_at = monotonic()
                    self._drain()
                except Exception:  # reporting must never raise into the trading thread
                    log.exception("retrain client flush failed")
                finally:
                    self._lock.release()
        elif not self._wake.is_set():
            self._wake.set()
        buf = self._buffer
        if len(buf) > self.max_buffer:
            over = 0
            try:
                while len(buf) > self.max_buffer:
                    buf.pop()
                    over += 1
            except IndexError:  # drained meanwhile by another thread
                pass
            if over:
                self._drop(over, "the buffer is full")

    def _drop(self, rows: int, why: str) -> None:
        with self._drop_lock:
            first = self._unreported_drops == 0
            self._dropped += rows
            self._unreported_drops += rows
        if first:  # once per episode, not once per row: the counters hold the rest
            log.error("retrain client dropping rows: %s", why)

    # ------------------------------------------------------------------ control
    def request_retraining(self, model: str, reason: str, *, requested_by: str = "trading-app",
                           approved_by: str | None = None, override_budget: bool = False,
                           override_reason: str | None = None) -> None:
        """Ask for a retraining now (a manual trigger); the decision still applies every rule.

        ``approved_by`` records a person's approval with the request (the first-week gate);
        ``override_budget`` skips the budget and ROI rules and needs ``override_reason``.
        Sent at once, on the caller's thread; raises if the broker is unreachable.
        """
        if type(override_budget) is not bool:  # the server refuses anything else ("yes", 1): say so here
            raise TypeError(f"override_budget must be True or False, not {override_budget!r}")
        payload = {"v": 1, "model": model, "reason": reason, "trigger": "manual", "requested_by": requested_by,
                   "override_budget": override_budget}
        if approved_by:
            payload["approved_by"] = approved_by
        if override_reason:
            payload["override_reason"] = override_reason
        send = self._send
        if self._inline and self._broker_url:
            # The relay cannot tell us whether the broker took it; this call says so by raising.
            if self._control_sender is None:
                self._control_sender = kombu_sender(self._broker_url)
            send = self._control_sender
        send(REQUEST_RETRAINING, payload, ROUTES[REQUEST_RETRAINING], 3)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Send everything buffered (predictions still waiting for outcomes stay). True if all went out."""
        deadline = monotonic() + timeout_s
        self._drain()
        while self._waiting and monotonic() < deadline:
            self._next_retry = 0.0
            self._send_waiting()
            if self._waiting:
                self._stop.wait(min(0.2, max(0.0, deadline - monotonic())))
        done = not self._waiting and not self._buffer
        if self._sender_flush is not None:  # the relay's own queue, down to the broker
            done = self._sender_flush(max(0.0, deadline - monotonic())) and done
        return done

    def close(self, timeout_s: float = 10.0) -> ClientStats:
        """Send what can be sent (pending predictions unlabelled), stop the flusher."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        self._drain(expire_all=True)
        self.flush(timeout_s)
        with self._lock:
            lost = self._waiting_rows
            self._waiting.clear()
            self._waiting_rows = 0
        if lost:
            self._drop(lost, "closing with batches the broker never took")
            log.error("retrain client closing with %d rows it could not send", lost)
        if self._sender_close is not None:
            self._sender_close(timeout_s)
        return self.stats

    @property
    def stats(self) -> ClientStats:
        return ClientStats(len(self._buffer), len(self._pending), len(self._waiting), self._sent_rows,
                           self._sent_batches, self._dropped, self._errors, self._waiting_rows)

    # ------------------------------------------------------------------ flusher
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self._drain()
            except Exception:  # the flusher must outlive any one bad batch
                log.exception("retrain client flush failed")

    def _tick(self) -> None:
        # Relay mode: a report call sends what is due. This thread sends itself only for an app
        # gone quiet for idle_flush_s; when the sender does not lower the threshold for us (a
        # relay process does), it also lowers it every flush_interval_s (a few bytecodes). It
        # wakes as seldom as it can: each wake of a thread in a process whose model releases
        # and retakes the GIL thousands of times a second costs milliseconds of CPU (measured:
        # ~27 ms a wake beside the example model's predict).
        while True:
            if self._sender_ticks:
                wait = self.idle_flush_s - (monotonic() - self._drained_at)
                wait = wait if wait > 0 else self.idle_flush_s
            else:
                wait = self.flush_interval_s
            if self._stop.wait(wait):
                return
            if not self._buffer and not self._waiting:
                continue
            if monotonic() - self._drained_at >= self.idle_flush_s:
                self._due()
            elif not self._sender_ticks:
                self._limit[0] = 0

    def _drain(self, expire_all: bool = False) -> None:
        with self._lock:
            self._gather(expire_all)
            self._send_waiting()
            if self._pump is not None:
                self._pump()

    def _gather(self, expire_all: bool) -> None:
        # Column by column, with C-level maps, filters and zips, not one loop with branches
        # over rows: this runs for every row the app reports, on one of its threads.
        now_ts = self._timestamp()
        buf, pending = self._buffer, self._pending
        items = list(starmap(buf.popleft, repeat((), len(buf))))
        # Predictions first, so that an outcome drained with its prediction finds it. They wait
        # as they came, each with the time it was gathered (its ts when reported without one).
        preds = [it for it in items if it[0] == "p"]
        if preds:
            pending.update(zip(map(_PID, preds), zip(preds, repeat(now_ts))))
        outcomes = [it for it in items if it[0] == "o"]
        # Each part: (items, the times they were gathered or None, their outcome items aligned,
        # or None when unlabelled, or _SELF for "l" items: a prediction with its outcome in one).
        parts: list[tuple[list, Any, Any]] = []
        if len(preds) + len(outcomes) < len(items):
            parts.append(([it for it in items if it[0] == "l"], None, _SELF))
        if outcomes:
            hits = list(map(pending.pop, map(_PID, outcomes), repeat(None)))
            if None in hits:  # outcomes of predictions never seen (or sent unlabelled already)
                orphans = [("l", o[1], o[2], None, None, "", now_ts, o[3], o[4])
                           for o, h in zip(outcomes, hits) if h is None]
                parts.append((orphans, None, _SELF))
                kept = [(o, h) for o, h in zip(outcomes, hits) if h is not None]
                outcomes, hits = [k[0] for k in kept], [k[1] for k in kept]
            if hits:
                # No None left in hits: the orphans went their own way above.
                parts.append((list(map(_FIRST, hits)), list(map(_SECOND, hits)), outcomes))  # type: ignore[arg-type]
        # Predictions that waited too long, or too many waiting: sent unlabelled, oldest first.
        cutoff = now_ts - self.prediction_ttl_s
        excess = len(pending) - self.max_pending_predictions
        expired = []
        while pending:
            pid = next(iter(pending))
            item, gathered = pending[pid]
            if excess <= 0 and not expire_all and (gathered if item[6] is None else item[6]) > cutoff:
                break
            del pending[pid]
            excess -= 1
            expired.append((item, gathered))
        if expired:
            parts.append((list(map(_FIRST, expired)), list(map(_SECOND, expired)), None))
        for preds, gathered, outs in parts:
            models = set(map(_MODEL, preds))
            if len(models) == 1:
                groups = [(preds[0][1], preds, gathered, outs)]
            else:
                groups = [(m, [p for p in preds if p[1] == m],
                           None if gathered is None else [g for p, g in zip(preds, gathered) if p[1] == m],
                           outs if outs is None or outs is _SELF else [o for p, o in zip(preds, outs) if p[1] == m])
                          for m in models]
            for model, ps, gs, os_ in groups:
                open_batches: dict[tuple[str, bool], _Batch] = {}
                for lo in range(0, len(ps), self.batch_size):
                    hi = lo + self.batch_size
                    self._add_rows(open_batches, model, ps[lo:hi], None if gs is None else gs[lo:hi],
                                   os_ if os_ is None or os_ is _SELF else os_[lo:hi], now_ts)
                for b in open_batches.values():
                    if len(b):
                        self._queue_batch(b)

    def _add_rows(self, open_batches: dict, model: str, preds: list[tuple], gathered: list[float] | None,
                  outs: Any, now_ts: float) -> None:
        """Add rows of one model column by column; any surprise sends them one by one instead.

        ``preds`` are prediction items (or "l" items), ``gathered`` when each was gathered
        (None: now), ``outs`` their outcome items, aligned, or None (unlabelled), or _SELF
        ("l" items)."""
        n = len(preds)
        pids = list(map(_PID, preds))
        xs = list(map(_X, preds))
        versions = list(map(_VERSION, preds))
        tss = list(map(_TS, preds))
        if None in tss:  # reported without ts: stamped when gathered
            if gathered is None:
                tss = [now_ts if t is None else t for t in tss]
            elif tss.count(None) == n:
                tss = gathered
            else:
                tss = [g if t is None else t for t, g in zip(tss, gathered)]
        preds_ = list(map(_PREDICTION, preds))
        if outs is None:
            labels: list = [None] * n
            rets: list = [None] * n
        elif outs is _SELF:
            labels, rets = list(map(_LABEL_L, preds)), list(map(_RET_L, preds))
        else:
            labels, rets = list(map(_LABEL_O, outs)), list(map(_RET_O, outs))
        try:
            width = self._width.get(model) or _width(xs[0])
            x = _packed_features(xs, width)
            ts = array("d", tss)
            ret = array("d", [_NAN if r is None else r for r in rets] if None in rets else rets)
            # int()/str() only where needed: the router's values are ints and strs already.
            pred = preds_ if set(map(type, preds_)) == _INTS else list(map(int, preds_))
            if None in labels:
                label = [None if v is None else int(v) for v in labels]
            else:
                label = labels if set(map(type, labels)) == _INTS else list(map(int, labels))
            ids = pids if set(map(type, pids)) == _STRS else list(map(str, pids))
        except (TypeError, ValueError):
            for r in zip(pids, versions, tss, xs, preds_, labels, rets):
                self._add(open_batches, model, *r)
            return
        key = (model, True)
        b = open_batches.get(key)
        if b is None or b.n_features != width:
            if b is not None and len(b):
                self._queue_batch(b)
            b = open_batches[key] = _Batch(model, width)
        room = self.batch_size - len(b)
        for lo in range(0, len(ids), room or 1):
            hi = lo + room
            b.id.extend(ids[lo:hi])
            b.version.extend(versions[lo:hi])
            b.ts.extend(ts[lo:hi])
            b.x.extend(x[lo * width:hi * width])
            b.prediction.extend(pred[lo:hi])
            b.label.extend(label[lo:hi])
            b.ret.extend(ret[lo:hi])
            if len(b) >= self.batch_size:
                self._queue_batch(b)
                b = open_batches[key] = _Batch(model, width)
            room = self.batch_size - len(b)

    def _add(self, open_batches: dict, model: str, pid: Any, version: str, ts: Any, x: Any, pred: Any,
             label: Any, ret: Any) -> None:
        b = None
        x = _unpacked(x)
        try:
            if x is not None:
                key = (model, True)
                b = open_batches.get(key)
                if b is None:
                    # The model's usual width, so that one odd first row does not slow a whole batch.
                    b = open_batches[key] = _Batch(model, self._width.get(model, len(x)))
                if b.n_features == len(x):
                    row = (str(pid), version, float(ts), None if pred is None else int(pred),
                           None if label is None else int(label), _NAN if ret is None else float(ret))
                    mark = len(b.x)
                    try:
                        b.x.extend(x)
                    except TypeError:
                        del b.x[mark:]
                        raise
                else:
                    b = None
        except (TypeError, ValueError):
            b = None
        if b is None:  # the slow way: the row as given, for the server to judge
            key = (model, False)
            b = open_batches.get(key)
            if b is None:
                b = open_batches[key] = _Batch(model, None)
            try:
                b.x.append(None if x is None else [_jsonable(v) for v in x])
            except TypeError:  # not a sequence at all
                b.x.append([_jsonable(x)])
            row = (str(pid), version, _jsonable(ts), _jsonable_int(pred), _jsonable_int(label), _jsonable(ret))
        b.id.append(row[0])
        b.version.append(row[1])
        b.ts.append(row[2])
        b.prediction.append(row[3])
        b.label.append(row[4])
        b.ret.append(row[5])
        if len(b) >= self.batch_size:
            self._queue_batch(b)
            del open_batches[key]

    def _queue_batch(self, b: _Batch) -> None:
        if b.n_features is not None:
            self._width[b.model] = b.n_features
        self._enqueue(b.payload(), len(b))

    def enqueue_payload(self, payload: dict[str, Any] | EncodedIngest, rows: int) -> None:
        """Queue an ingest payload packed elsewhere (the relay process gets its batches so);
        it is sent, retried and bounded like the client's own."""
        with self._lock:
            self._enqueue(payload, rows)
        if self._thread is not None:
            self._wake.set()

    def _enqueue(self, payload: dict[str, Any] | EncodedIngest, rows: int) -> None:
        self._waiting.append((payload, rows))
        self._waiting_rows += rows
        while len(self._waiting) > self.max_waiting_batches:
            payload, n = self._waiting.popleft()
            self._waiting_rows -= n
            # A drop count the lost batch was carrying is lost with it: count it again.
            self._drop(n + _carried(payload),
                       f"the broker is unreachable and {self.max_waiting_batches} batches are waiting")

    def _send_waiting(self) -> None:
        with self._lock:
            if monotonic() < self._next_retry:
                return
            while self._waiting:
                payload, n = self._waiting[0]
                with self._drop_lock:
                    reported = self._unreported_drops
                if reported:  # added to what the payload carries already (a relay's parent counts too)
                    if isinstance(payload, EncodedIngest):  # its body stays as it is: a message of their own
                        self._waiting.appendleft((_drop_notice(payload.model), 0))
                        continue
                    payload = {**payload, "client_dropped": payload.get("client_dropped", 0) + reported}
                try:
                    self._send(INGEST, payload, ROUTES[INGEST], 5)
                except Exception as exc:  # broker down: keep the batch, back off
                    self._errors += 1
                    self._next_retry = monotonic() + min(self.retry_max_s, 0.5 * 2 ** min(self._errors, 6))
                    log.warning("retrain client could not send (%s); %d batches waiting", exc, len(self._waiting))
                    return
                self._waiting.popleft()
                self._waiting_rows -= n
                with self._drop_lock:
                    self._unreported_drops -= reported
                self._sent_rows += n
                self._sent_batches += 1
                self._errors = 0
