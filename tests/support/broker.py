"""Looking into RabbitMQ from a test: queue depths, and publishing a job's message by hand."""

from __future__ import annotations

import time

import pika
import pika.exceptions

from tests.support.infra import Infra


def depth(infra: Infra, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(infra.broker_url))
    try:
        channel = connection.channel()
        try:
            count: int = channel.queue_declare(queue, passive=True).method.message_count
            return count
        except pika.exceptions.ChannelClosedByBroker:
            return 0
    finally:
        connection.close()


def publish_raw(infra: Infra, queue: str, body: bytes, content_type: str | None = None) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(infra.broker_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            "", queue, body, pika.BasicProperties(delivery_mode=2, content_type=content_type)
        )
    finally:
        connection.close()


def depth_becomes(infra: Infra, queue: str, expected: int, timeout: float = 10.0) -> int:
    """The queue's depth once it is `expected`, or as it is when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while (found := depth(infra, queue)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return found
