"""The transport room: everything that talks to the broker, behind one small interface.

The relay publishes through a `Publisher`; the API's health, the dashboard, the CLI and the
relay's clean-up read depths and handle dead-letter copies through the functions below. Each
takes the BROKER_URL and hands it to the module of its broker, by the URL's scheme: `redis://`
(and `rediss://`, `unix://`) to `redis`, anything else to `rabbitmq` and `confirms`. The
worker's consuming side (a Dramatiq broker with a claiming consumer) lives in
`app.execution`; it takes its queue arguments, node list and Redis keys from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Literal, Protocol

from dramatiq import Message

from app.errors import QueueTypeMismatch
from app.transport import rabbitmq
from app.transport.rabbitmq import PROBE_TIMEOUT_SECONDS, Progress

__all__ = [
    "PROBE_TIMEOUT_SECONDS",
    "Progress",
    "Publisher",
    "dead_depth",
    "depths",
    "ensure_queues",
    "kind",
    "publisher",
    "purge_dead",
    "remove_dead_copies",
    "type_mismatch",
]


class Publisher(Protocol):
    """Publishes batches that are durable in the broker when `publish` returns."""

    def publish(self, messages: Sequence[tuple[Message[None], int]], *, dead: bool = False) -> None:
        """Publish (message, priority) pairs, to the dead-letter queue when `dead`; every one is
        confirmed by the broker, or PublishFailed is raised and none counts as published."""

    def close(self) -> None:
        """Drop the connection; the next batch makes a new one."""

    def forgotten(self, cutoff: datetime) -> datetime | None:
        """When the broker forgot its messages since the last look, the cutoff before which every
        job not yet claimed must be published again (`cutoff`, or another relay's); else None."""

    def requeue_orphans(self, timeout: float) -> int:
        """Give back what consumers silent for `timeout` seconds took and did not acknowledge."""


# Redis is imported only where it is the broker: the client pulls in its own telemetry.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def kind(broker_url: str) -> Literal["rabbitmq", "redis", "stub"]:
    if broker_url.startswith("stub"):
        return "stub"
    return "redis" if broker_url.startswith(REDIS_SCHEMES) else "rabbitmq"


def publisher(broker_url: str, heartbeat_seconds: int = 5) -> Publisher:
    if kind(broker_url) == "redis":
        from app.transport import redis

        return redis.RedisPublisher(broker_url)
    from app.transport.confirms import ConfirmingPublisher

    return ConfirmingPublisher(broker_url, heartbeat_seconds)


def ensure_queues(broker_url: str, queues: Iterable[str]) -> None:
    """Declare each queue with its delay and dead-letter queues, as BROKER_QUEUE_TYPE says."""
    if kind(broker_url) == "redis":
        from app.transport import redis

        redis.ensure_queues(broker_url, queues)
    else:
        rabbitmq.ensure_queues(broker_url, queues)


def depths(broker_url: str, names: Sequence[str]) -> dict[str, int | None]:
    """Messages ready in each queue (None when it is not declared); raises when unreachable."""
    if kind(broker_url) == "redis":
        from app.transport import redis

        return redis.depths(broker_url, names)
    return rabbitmq.depths(broker_url, names)


def type_mismatch(
    broker_url: str, queues: Iterable[str], queue_type: str | None = None
) -> QueueTypeMismatch | None:
    """One error naming every queue (of `queues` and their .DQ and .XQ) RabbitMQ holds with
    another type than `queue_type` (BROKER_QUEUE_TYPE's); None when there is none (always, on
    Redis). Raises when the broker cannot be reached."""
    if kind(broker_url) != "rabbitmq":
        return None
    return rabbitmq.type_mismatch(broker_url, queues, queue_type)


def purge_dead(broker_url: str, queues: Iterable[str]) -> dict[str, int]:
    """Empty the dead-letter queue of each queue; how many messages each held."""
    if kind(broker_url) == "redis":
        from app.transport import redis

        return redis.purge_dead(broker_url, queues)
    return rabbitmq.purge_dead(broker_url, queues)


def dead_depth(broker_url: str, queue: str) -> int:
    """Messages in the queue's dead-letter queue (0 when it was never declared)."""
    if kind(broker_url) == "redis":
        from app.transport import redis

        return redis.dead_depth(broker_url, queue)
    return rabbitmq.dead_depth(broker_url, queue)


def remove_dead_copies(
    broker_url: str, wanted: dict[str, set[tuple[str, int]]], progress: Progress | None = None
) -> int:
    """Take the copies of the given (job id, run)s out of each queue's dead-letter queue."""
    if kind(broker_url) == "redis":
        from app.transport import redis

        return redis.remove_dead_copies(broker_url, wanted, progress)
    return rabbitmq.remove_dead_copies(broker_url, wanted, progress)
