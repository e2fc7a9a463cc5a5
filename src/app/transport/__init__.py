"""The transport room: everything that talks to the broker, behind one small interface.

The relay publishes through a `Publisher`; the API's health, the dashboard, the CLI and the
relay's clean-up read depths and handle dead-letter copies through the functions below. Each
takes the BROKER_URL and hands it to the module of its broker (`rabbitmq`, `confirms`), so
another broker's module can sit beside them. The worker's consuming side (a Dramatiq broker
with a claiming consumer) still lives in `app.execution.consumer`; it takes its queue
arguments and node list from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from dramatiq import Message

from app.transport import rabbitmq
from app.transport.rabbitmq import PROBE_TIMEOUT_SECONDS, Progress

__all__ = [
    "PROBE_TIMEOUT_SECONDS",
    "Progress",
    "Publisher",
    "dead_depth",
    "depths",
    "ensure_queues",
    "publisher",
    "purge_dead",
    "remove_dead_copies",
]


class Publisher(Protocol):
    """Publishes batches that are durable in the broker when `publish` returns."""

    def publish(self, messages: Sequence[tuple[Message[None], int]], *, dead: bool = False) -> None:
        """Publish (message, priority) pairs, to the dead-letter queue when `dead`; every one is
        confirmed by the broker, or PublishFailed is raised and none counts as published."""

    def close(self) -> None:
        """Drop the connection; the next batch makes a new one."""


def publisher(broker_url: str, heartbeat_seconds: int = 5) -> Publisher:
    from app.transport.confirms import ConfirmingPublisher

    return ConfirmingPublisher(broker_url, heartbeat_seconds)


def ensure_queues(broker_url: str, queues: Iterable[str]) -> None:
    """Declare each queue with its delay and dead-letter queues, as BROKER_QUEUE_TYPE says."""
    rabbitmq.ensure_queues(broker_url, queues)


def depths(broker_url: str, names: Sequence[str]) -> dict[str, int | None]:
    """Messages ready in each queue (None when it is not declared); raises when unreachable."""
    return rabbitmq.depths(broker_url, names)


def purge_dead(broker_url: str, queues: Iterable[str]) -> dict[str, int]:
    """Empty the dead-letter queue of each queue; how many messages each held."""
    return rabbitmq.purge_dead(broker_url, queues)


def dead_depth(broker_url: str, queue: str) -> int:
    """Messages in the queue's dead-letter queue (0 when it was never declared)."""
    return rabbitmq.dead_depth(broker_url, queue)


def remove_dead_copies(
    broker_url: str, wanted: dict[str, set[tuple[str, int]]], progress: Progress | None = None
) -> int:
    """Take the copies of the given (job id, run)s out of each queue's dead-letter queue."""
    return rabbitmq.remove_dead_copies(broker_url, wanted, progress)
