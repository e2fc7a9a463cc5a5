"""Declaring a job queue the way a Dramatiq worker does, without building a broker.

A worker declares `<queue>`, `<queue>.DQ` and `<queue>.XQ` with these arguments when it
starts; RabbitMQ refuses a second declaration with different ones, so the relay, which
may publish before any worker ran, declares them identically.
"""

from __future__ import annotations

from typing import Any

from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL
from dramatiq.common import dq_name, xq_name
from pika.adapters.blocking_connection import BlockingChannel

from app.jobs.registry import MAX_PRIORITY


def queue_arguments(queue: str) -> dict[str, Any]:
    """The arguments of `<queue>` and `<queue>.DQ`: dead letters go to `<queue>.XQ`."""
    return {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": xq_name(queue),
        "x-max-priority": MAX_PRIORITY,
    }


def dead_letter_arguments() -> dict[str, Any]:
    """`<queue>.XQ` keeps its messages for Dramatiq's dead message TTL (7 days by default)."""
    return {"x-message-ttl": DEAD_MESSAGE_TTL}


def declare(channel: BlockingChannel, queue: str) -> None:
    channel.queue_declare(queue=queue, durable=True, arguments=queue_arguments(queue))
    channel.queue_declare(queue=dq_name(queue), durable=True, arguments=queue_arguments(queue))
    channel.queue_declare(queue=xq_name(queue), durable=True, arguments=dead_letter_arguments())
