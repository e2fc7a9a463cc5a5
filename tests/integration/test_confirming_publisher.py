"""The relay's publisher against the real RabbitMQ: a batch is confirmed whole, and its frames
reach the socket in a few writes, not one per frame of every message."""

from __future__ import annotations

from typing import Any

import pika
from dramatiq import Message

from app.transport.confirms import ConfirmingPublisher
from tests.support.infra import Infra

QUEUE = "default"


def doorbells(n: int) -> list[tuple[Message[None], int]]:
    return [
        (Message(queue_name=QUEUE, actor_name="app.tasks.example.echo", args=(), kwargs={}, options={}), 0)
        for _ in range(n)
    ]


def depth(infra: Infra) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(infra.broker_url))
    try:
        return int(connection.channel().queue_declare(QUEUE, passive=True).method.message_count)
    finally:
        connection.close()


def test_a_batch_of_200_is_confirmed_whole_and_written_in_a_few_sends(clean_ledger: Infra) -> None:
    publisher = ConfirmingPublisher(clean_ledger.broker_url)
    try:
        publisher.publish(doorbells(1))  # connects, declares
        transport: Any = publisher._connection._impl._transport  # type: ignore[union-attr]
        sends: list[int] = []
        real_send = transport._sigint_safe_send

        def counted(sock: Any, data: bytes) -> int:
            sends.append(len(data))
            return int(real_send(sock, data))

        transport._sigint_safe_send = counted
        publisher.publish(doorbells(200))
        assert publisher._confirmed == publisher._published == 201
        assert 1 <= len(sends) <= 10, f"{len(sends)} writes for 200 messages (600 frames)"
    finally:
        publisher.close()
    assert depth(clean_ledger) == 201
