"""Send again what a broker restart may have forgotten: a wrapper for the client's sender.

A Redis broker without persistence forgets every message it holds when it restarts:
batches the trading app's client had handed over, but no worker had taken yet, are
gone, and the client, whose send succeeded, cannot know. Ingest batches are
idempotent by batch id, so the cure is cheap: keep what was sent in the last
``window_s`` seconds (at most ``max_messages``), notice the restart, and send it all
again; the ingest step counts each batch once.

The restart is noticed by the Redis server's ``run_id`` (``INFO server``), which is
new at every start; it is read before each send, one round trip per batch (about
0.15 ms, against a batch of thousands of rows). When the broker is down the read
fails, the send raises, and the client keeps the batch as it does for any failed
send. A broker that keeps its queues (RabbitMQ, durable queues and persistent
messages) needs none of this: for it the sender is returned unchanged.

Only idempotent tasks are kept (default ``retrain.ingest``): a replayed retraining
request would be a second request.

Example
-------
>>> from retrain.client import RetrainClient, kombu_sender               # doctest: +SKIP
>>> url = "redis://127.0.0.1:6379/0"                                     # doctest: +SKIP
>>> client = RetrainClient(sender=replaying_sender(kombu_sender(url), url))  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from retrain.core.clock import monotonic
from retrain.queues import is_redis
from retrain.tasks import INGEST

__all__ = ["replaying_sender", "ReplayStats", "redis_run_id", "redeclare_queues"]

#: As :data:`retrain.client.Sender`: the payload is a JSON dict or a packed ingest batch.
Sender = Callable[[str, Any, str, int], None]


@dataclass
class ReplayStats:
    restarts_seen: int = 0
    replayed: int = 0
    kept: int = 0


def redis_run_id(broker_url: str, timeout_s: float = 2.0) -> Callable[[], str]:
    """A probe returning the Redis server's run id (new at every start of the server)."""
    import redis

    client = redis.Redis.from_url(broker_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    return lambda: str(client.info("server")["run_id"])


def redeclare_queues(broker_url: str) -> Callable[[], None]:
    """Declare our queues (and their bindings) again on a broker that forgot them.

    kombu's Redis transport routes a message through the exchange's binding table, kept
    in Redis itself: after a restart, until some consumer declares the queue again, a
    publisher that believes it declared it already sends into kombu's undeliverable
    list, and the message is silently gone.
    """
    from kombu import Connection

    from retrain.queues import kombu_queues, transport_options

    def declare() -> None:
        with Connection(broker_url, transport_options=transport_options(broker_url)) as conn:
            channel = conn.default_channel
            for q in kombu_queues(broker_url):  # replaying is for Redis, where queues take no arguments
                q(channel).declare()

    return declare


def replaying_sender(send: Sender, broker_url: str, *, window_s: float = 120.0, max_messages: int = 200,
                     tasks: Collection[str] = (INGEST,), probe: Callable[[], str] | None = None,
                     redeclare: Callable[[], None] | None = None, stats: ReplayStats | None = None) -> Sender:
    """Wrap ``send`` so that messages of ``tasks`` sent in the last ``window_s`` seconds are
    sent again after the broker restarts (after declaring the queues again). Thread-safe;
    ``stats`` counts what it did."""
    if probe is None and not is_redis(broker_url):
        return send
    probe = probe or redis_run_id(broker_url)
    redeclare = redeclare or redeclare_queues(broker_url)
    stats = stats if stats is not None else ReplayStats()
    kept: collections.deque[tuple[float, str, dict, str, int]] = collections.deque()
    lock = threading.Lock()
    seen: dict[str, str | None] = {"run_id": None}

    def wrapped(task: str, payload: Any, queue: str, priority: int) -> None:
        with lock:
            run_id = probe()  # raises while the broker is down: the caller keeps the message
            if seen["run_id"] is not None and run_id != seen["run_id"]:
                stats.restarts_seen += 1
                redeclare()
                for _, t, p, q, pr in list(kept):
                    send(t, p, q, pr)  # a failure here leaves run_id unseen: the next send replays again
                    stats.replayed += 1
            seen["run_id"] = run_id
            send(task, payload, queue, priority)
            if task in tasks:
                now = monotonic()
                kept.append((now, task, payload, queue, priority))
                while kept and (len(kept) > max_messages or kept[0][0] < now - window_s):
                    kept.popleft()
            stats.kept = len(kept)

    return wrapped
