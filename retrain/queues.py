"""The messaging contract: queue names, task routes, priorities and broker options.

Shared by the workers (``celeryconfig``) and the trading app's client, which sends
tasks by name with kombu and never imports ``workers``. Each queue has its own direct
exchange of the same name (Celery's convention), so a message sent "to queue X" lands
in X whoever declared it first. On Redis every transport option that shapes keys is
kombu's default, so a plain ``Celery(broker=url)`` producer and our client share the
same bindings; the priority options only change how workers read.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from retrain import tasks
from retrain.core.errors import ConfigError

__all__ = ["QUEUES", "ROUTES", "MAX_PRIORITY", "is_redis", "is_amqp", "broker_priority", "kombu_queues",
           "declare_queues", "transport_options", "longest_hard_limit_s", "check_visibility_timeout"]

# Queue names and each task's queue come from the task table (retrain.tasks).
QUEUES: tuple[str, ...] = tasks.QUEUES
ROUTES: dict[str, str] = tasks.ROUTES
MAX_PRIORITY = 9


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "redis+socket://", "sentinel://"))


def is_amqp(url: str) -> bool:
    return url.startswith(("amqp://", "amqps://", "pyamqp://"))


def broker_priority(priority: int, url: str) -> int:
    """Our priority (9 = emergency, highest) on the broker's scale: Redis takes 0 as the highest."""
    priority = max(0, min(MAX_PRIORITY, int(priority)))
    return MAX_PRIORITY - priority if is_redis(url) else priority


def kombu_queues(url: str, amqp_max_priority: int = 0) -> tuple[Queue, ...]:
    """Our queues. On RabbitMQ they are plain queues by default, as Celery declares them: a
    queue with ``x-max-priority`` refuses (406 PRECONDITION_FAILED) every producer that
    declares it without, and every plain Celery app does. ``amqp_max_priority`` > 0 makes
    them priority queues (``RETRAIN_AMQP_MAX_PRIORITY``); other producers must then
    declare the same (Celery: ``task_queue_max_priority``)."""
    args = {"x-max-priority": amqp_max_priority} if is_amqp(url) and amqp_max_priority > 0 else None
    return tuple(Queue(q, Exchange(q, type="direct"), routing_key=q, queue_arguments=args) for q in QUEUES)


def declare_queues(connection, queues) -> list[str]:
    """Declare ``queues`` on RabbitMQ, using a queue that already exists as it is.

    Whoever declared a queue first fixed its arguments; declaring it again with other
    ones would fail. So each queue is probed first (a passive declare); an existing one
    gets our exchange and binding and is marked ``no_declare`` (so neither Celery nor
    kombu declares it again), a missing one is declared with our arguments. Returns the
    names of the queues that existed. On other brokers it does nothing.
    """
    found: list[str] = []
    if connection.transport.driver_type != "amqp":
        return found
    for queue in queues:
        probe = connection.channel()
        try:
            probe.queue_declare(queue=queue.name, passive=True)
            exists = True
        except connection.channel_errors:  # 404 NOT_FOUND: the broker closed the probe's channel
            exists = False
        finally:
            try:
                probe.close()
            except Exception:  # noqa: BLE001 - already closed by the broker
                pass
        channel = connection.channel()
        try:
            bound = queue(channel)
            if exists:
                bound.exchange.declare()
                channel.queue_bind(queue=queue.name, exchange=queue.exchange.name, routing_key=queue.routing_key)
                queue.no_declare = True
                found.append(queue.name)
            else:
                bound.declare()
        finally:
            channel.close()
    return found


def longest_hard_limit_s(settings: Any) -> int:
    """The longest hard time limit of any task in the table (its default included), in seconds."""
    return max(hard for _, hard in (tasks.DEFAULT_LIMITS.of(settings),
                                    *(t.limits.of(settings) for t in tasks.TASKS.values())))


def check_visibility_timeout(settings: Any) -> None:
    """The one check of the Redis visibility timeout: it must exceed the longest hard time limit,
    or Redis hands a task that is still running to a second worker (fault tests may allow it)."""
    if not is_redis(settings.broker_url) or settings.allow_short_visibility_timeout:
        return
    longest = longest_hard_limit_s(settings)
    if settings.visibility_timeout_s <= longest:
        raise ConfigError(f"RETRAIN_VISIBILITY_TIMEOUT_S={settings.visibility_timeout_s} must exceed the longest hard "
                          f"time limit ({longest} s), or Redis redelivers tasks that are still running")


def transport_options(url: str, visibility_timeout_s: int | None = None) -> dict:
    if is_redis(url):
        # kombu's default separator (no "sep" option): a plain Celery producer declares its
        # bindings with it, and one binding in another format breaks every send to the queue.
        opts: dict[str, Any] = {"priority_steps": list(range(MAX_PRIORITY + 1)),
                                "queue_order_strategy": "priority"}
        if visibility_timeout_s is not None:
            opts["visibility_timeout"] = visibility_timeout_s
        return opts
    if url.startswith("memory://"):
        return {"polling_interval": 0.001}
    return {}
