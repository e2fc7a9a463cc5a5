"""Publishing to RabbitMQ in batches that are durable when `publish` returns: publisher confirms.

The channel is in confirm mode. A batch is published whole, then every confirm is awaited at
once (RabbitMQ acknowledges many with one `basic.ack` multiple), so a batch costs about one
round trip, not one per message as pika's blocking `confirm_delivery` would. A `basic.nack`,
a `basic.return` (messages are `mandatory`: one that no queue takes comes back) or no confirm
within TIMEOUT_SECONDS fails the whole batch, and none of it counts as published.

AMQP transactions, which this replaced, are not enough on quorum queues: `tx.commit-ok` was
seen after a leader failover for messages the queue had dropped (RabbitMQ issue 8966).
`TxPublisher` keeps them, for `bench/publish.py` to compare.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from datetime import datetime

import pika
import pika.exceptions
from dramatiq import Message
from dramatiq.common import xq_name
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.frame import Method
from pika.spec import Basic, BasicProperties

from app.errors import PublishFailed, QueueTypeMismatch
from app.transport import rabbitmq

TIMEOUT_SECONDS = 30.0


class ConfirmingPublisher:
    """A connection (to the first node of BROKER_URL that answers) and a confirming channel of its
    own; it declares the queues it publishes to. A lost connection is made again, over the whole
    node list, at the next batch."""

    transactional = False

    def __init__(self, broker_url: str, heartbeat_seconds: int = 5, queue_type: str | None = None) -> None:
        # A broker that stops answering (or blocks publishers on a resource alarm) fails the
        # batch instead of holding the relay: its heartbeat goes stale and readiness says so.
        self.nodes = rabbitmq.node_parameters(
            broker_url,
            socket_timeout=TIMEOUT_SECONDS,
            blocked_connection_timeout=TIMEOUT_SECONDS,
            heartbeat=heartbeat_seconds,
        )
        self.queue_type = rabbitmq.queue_type(queue_type)
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._declared: set[str] = set()
        self._returned: list[str] = []
        self._published = 0  # the delivery tag of the last message published on this channel
        self._confirmed = 0  # every tag up to this one is acknowledged
        self._acked: set[int] = set()  # acknowledged one by one, above `_confirmed`
        self._nacked = 0

    def publish(self, messages: Sequence[tuple[Message[None], int]], *, dead: bool = False) -> None:
        """Publish (message, priority) pairs; to `<queue>.XQ` when `dead`. Raises PublishFailed."""
        if not messages:
            return
        try:
            channel = self._ensure_channel()
            for message, _ in messages:
                self._declare(channel, message.queue_name)
            self._returned.clear()
            self._nacked = 0
            with _one_write(channel):
                for message, priority in messages:
                    channel._impl.basic_publish(
                        exchange="",
                        routing_key=xq_name(message.queue_name) if dead else message.queue_name,
                        body=message.encode(),
                        properties=BasicProperties(delivery_mode=2, priority=priority or None),
                        mandatory=True,
                    )
                    self._published += 1
            self._settle()
        except (pika.exceptions.AMQPError, OSError) as error:
            self.close()
            raise PublishFailed(f"publishing {len(messages)} messages failed: {error!r}") from error
        if self._returned:
            self._declared.clear()
            raise PublishFailed(f"RabbitMQ returned unroutable messages for {sorted(set(self._returned))}")
        if self._nacked:
            raise PublishFailed(f"RabbitMQ refused {self._nacked} of {len(messages)} messages (basic.nack)")

    def _settle(self) -> None:
        """Wait until every message published is confirmed (or refused)."""
        assert self._connection is not None
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while self._confirmed < self._published:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise PublishFailed(f"RabbitMQ did not confirm the batch within {TIMEOUT_SECONDS:.0f} s")
            self._connection.process_data_events(time_limit=min(left, 1.0))
        self._connection.process_data_events(0)  # dispatches returns that came before the acks

    def _on_confirm(self, frame: Method[Basic.Ack | Basic.Nack]) -> None:
        method = frame.method
        tag = int(method.delivery_tag)
        if isinstance(method, Basic.Nack):
            self._nacked += tag - self._confirmed if method.multiple else 1
        if method.multiple:
            self._confirmed = max(self._confirmed, tag)
        else:
            self._acked.add(tag)
        while self._confirmed + 1 in self._acked:
            self._confirmed += 1
            self._acked.discard(self._confirmed)
        self._acked = {t for t in self._acked if t > self._confirmed}
        if self._confirmed >= self._published and self._connection is not None:
            # The acknowledgements reach this callback of the wrapped channel, which the
            # blocking connection does not count as an event: wake `_settle` up at once.
            self._connection.add_callback_threadsafe(_nothing)

    def _declare(self, channel: BlockingChannel, queue: str) -> None:
        if queue not in self._declared:
            try:
                rabbitmq.declare(channel, queue, self.queue_type)
            except QueueTypeMismatch as error:
                self.close()
                raise PublishFailed(str(error)) from error
            self._declared.add(queue)

    def _ensure_channel(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self.close()
            self._connection = pika.BlockingConnection(rabbitmq.resolvable(self.nodes))
            self._channel = self._connection.channel()
            self._start(self._channel)
            self._channel.add_on_return_callback(self._on_return)
            self._declared.clear()
        return self._channel

    def _start(self, channel: BlockingChannel) -> None:
        """Confirm mode, with the acknowledgements counted here rather than awaited per message.

        pika's blocking channel only offers the per-message wait, so confirm mode is asked of
        the channel it wraps, and the acknowledgements arrive while `_settle` processes events.
        """
        self._published = self._confirmed = 0
        self._acked.clear()
        selected: list[bool] = []
        channel._impl.confirm_delivery(self._on_confirm, callback=lambda _frame: selected.append(True))
        assert self._connection is not None
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while not selected:
            if time.monotonic() > deadline:
                raise pika.exceptions.AMQPChannelError("confirm.select got no answer")
            self._connection.process_data_events(time_limit=0.1)

    def _on_return(
        self, channel: BlockingChannel, method: Basic.Return, properties: BasicProperties, body: bytes
    ) -> None:
        self._returned.append(method.routing_key)

    def forgotten(self, cutoff: datetime) -> datetime | None:
        """Durable queues forget nothing they confirmed."""
        return None

    def requeue_orphans(self, timeout: float) -> int:
        """RabbitMQ gives back a closed channel's unacknowledged messages itself."""
        return 0

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()


@contextlib.contextmanager
def _one_write(channel: BlockingChannel) -> Iterator[None]:
    """The frames of every message published inside go to the socket as one buffer.

    pika's blocking `basic_publish` sends each message on its own, and its connection hands the
    transport each frame (method, header, body) as a buffer of its own, written with one
    `send()` each: three system calls and an I/O loop turn per message, most of the relay's
    CPU. Published on the channel it wraps, the frames are gathered here and written once, by
    `_settle`'s turn of the loop."""
    connection = channel._impl.connection
    frames: list[bytes] = []
    connection._adapter_emit_data = frames.append  # an instance attribute over the method
    try:
        yield
    finally:
        del connection._adapter_emit_data
        if frames:
            connection._adapter_emit_data(b"".join(frames))


def _nothing() -> None:
    """A wake-up: `process_data_events` returns once a callback ran."""


class TxPublisher(ConfirmingPublisher):
    """The relay's former way: one AMQP transaction per batch (kept for bench/publish.py only)."""

    transactional = True

    def _start(self, channel: BlockingChannel) -> None:
        channel.tx_select()

    def _settle(self) -> None:
        assert self._channel is not None
        assert self._connection is not None
        self._channel.tx_commit()
        self._connection.process_data_events(0)
