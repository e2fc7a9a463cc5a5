"""The worker's RabbitMQ consumer: it claims what it receives, a burst at a time, and acknowledges
each message as its job is claimed.

Once the ledger says a worker owns a job (a lease, fenced writes, the relay's reaper), the
message has done its work: it rang. So the consumer thread takes every message RabbitMQ has
already delivered, claims their jobs in one statement and one commit, acknowledges the lot
with one `basic.ack` (multiple), and only then hands the claimed ones to the worker threads.
A message whose job is not claimable (finished, running elsewhere, not due, or naming
another task) is acknowledged and never reaches a thread. Dramatiq's own acknowledgement
after the task is then a no-op; it only frees the thread's slot.

The consumer claims a job for each free thread, and ahead of them only what the threads will
start within a second at their current pace (`Slots`): none while they run long tasks, so a
long task never keeps a claimed job waiting, and what waits is unclaimed, for any worker to
take. A job claimed ahead that no thread started within that second goes back (unclaimed).

- A message held longer than WORKER_HOLD_SECONDS (every thread busy with long tasks) is
  handed back to the queue for another worker, before RabbitMQ's consumer timeout would
  close the channel over it.
- The connection sends AMQP heartbeats every AMQP_HEARTBEAT_SECONDS, so RabbitMQ closes the
  connection of a frozen worker (SIGSTOP, a VM pause) after two missed ones and gives its
  waiting messages to other workers.

Acknowledging at the claim also means that RabbitMQ's `consumer_timeout` (30 minutes by
default) never closes a channel under a long task: what happens next (success, retry,
death, a crash) is the ledger's business.
"""

from __future__ import annotations

import time
from typing import Any

import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer, _RabbitmqMessage
from dramatiq.common import dq_name, xq_name
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from app.execution.claiming import (
    AHEAD_HORIZON_SECONDS,
    MAX_BURST,
    BurstClaims,
    Claims,
    Slots,
    job_id_of,
)
from app.logs import BROKER_OUTAGE, get_logger
from app.transport import rabbitmq

__all__ = ["AHEAD_HORIZON_SECONDS", "ClaimingBroker", "ClaimingConsumer", "Slots", "job_id_of"]

log = get_logger("conveyor.worker")

AMQP_ERRORS = (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError)


class ClaimingConsumer(BurstClaims, _RabbitmqConsumer):
    """Claims in bursts, acknowledges at the claim, hands back messages held too long, and
    ignores the acknowledgement Dramatiq sends when a task is done."""

    def __init__(self, broker: ClaimingBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        BROKER_OUTAGE.recovered(queue=queue_name)  # connected: whatever outage there was is over
        self._start_claims(broker.claims)
        self.hold_seconds = broker.hold_seconds
        self.wait_seconds = timeout / 1000

    def __next__(self) -> Any:
        try:
            if not self._ready:
                self._receive()
                self._hand_back_held_too_long()
                self.claims.withdraw_stale()
                self._claim_what_fits()
        except AMQP_ERRORS as error:
            if getattr(error, "reply_code", None) == 404:
                self.broker.queues_pending.add(self.queue_name)  # type: ignore[attr-defined]
            raise ConnectionClosed(error) from None  # type: ignore[no-untyped-call]
        return self._ready.popleft() if self._ready else None

    # -- receiving ------------------------------------------------------------------------

    def _receive(self) -> None:
        """Wait for a message (or a free slot, when messages already wait), then take every
        message already delivered."""
        if not self._pending:
            method, _properties, body = next(self.iterator)
            if method is None:
                return
            self._add(method, body)
        elif (pause := self._claim_pause - time.monotonic()) > 0:
            self.connection.sleep(min(pause, self.wait_seconds))  # heartbeats go on meanwhile
        elif not self.claims.slots.wait(id(self), self._wake):
            self.connection.process_data_events(time_limit=self.wait_seconds)  # a wake-up ends it
        while self.channel.get_waiting_message_count() and len(self._pending) < MAX_BURST:
            method, _properties, body = next(self.iterator)
            self._add(method, body)

    def _wake(self) -> None:
        try:
            self.connection.add_callback_threadsafe(_nothing)
        except Exception:  # closed meanwhile: its consumer thread is restarting anyway
            log.debug("could not wake a consumer whose connection closed")

    def _add(self, method: Any, body: bytes) -> None:
        tag = method.delivery_tag
        try:
            decoded = Message.decode(body)
            message = _RabbitmqMessage(method.redelivered, tag, decoded)  # type: ignore[no-untyped-call]
        except DecodeError:
            log.error("undecodable message: sent to the dead-letter queue", queue=self.queue_name)
            self.channel.basic_nack(tag, requeue=False)
            return
        if not self._runnable(message):
            self.channel.basic_nack(tag, requeue=False)
            return
        self._pending.append((message, time.monotonic()))

    # -- settling -------------------------------------------------------------------------

    def _settle(self, burst: list[_RabbitmqMessage]) -> None:
        """Acknowledge a claimed burst: one `basic.ack` for all, unless an older delivery still waits."""
        last = burst[-1]._tag
        if all(message._tag > last for message, _ in self._pending):
            self.channel.basic_ack(last, multiple=True)
        else:
            for message in burst:
                self.channel.basic_ack(message._tag)

    def _hand_back_held_too_long(self) -> None:
        """Reject (requeue) what waited too long for a thread, for another worker to run."""
        deadline = time.monotonic() - self.hold_seconds
        stale = 0
        while self._pending and self._pending[0][1] < deadline:
            message, _ = self._pending.popleft()
            self.channel.basic_reject(message._tag, requeue=True)
            stale += 1
        if stale:
            log.warning(
                "messages held without a free thread went back to the queue",
                queue=self.queue_name,
                messages=stale,
                held_s=self.hold_seconds,
            )

    def close(self) -> None:
        try:
            self._unclaim_ready()
        finally:
            self._close_channel()

    def _close_channel(self) -> None:
        try:
            super().close()  # type: ignore[no-untyped-call]
        except ConnectionClosed:
            log.debug("the consumer's connection was already closed")


def _nothing() -> None:
    """A wake-up: `process_data_events` returns once a callback ran."""


class ClaimingBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker with the claiming consumer and AMQP heartbeats, over every node
    of a `;`-separated BROKER_URL (tried in order, again after a node is lost), declaring its
    queues as BROKER_QUEUE_TYPE says (`app.transport.rabbitmq`, the relay's arguments too)."""

    def __init__(
        self,
        *,
        url: str,
        middleware: list[Middleware],
        claims: Claims,
        max_priority: int,
        heartbeat_seconds: int,
        hold_seconds: float,
        queue_type: str | None = None,
    ) -> None:
        nodes = rabbitmq.node_urls(url)
        super().__init__(url=nodes, confirm_delivery=True, max_priority=max_priority, middleware=middleware)
        self.parameters = rabbitmq.node_parameters(url, heartbeat=heartbeat_seconds)
        self.queue_type = rabbitmq.queue_type(queue_type)
        self.claims = claims
        self.hold_seconds = hold_seconds

    @property
    def parameters(self) -> list[pika.URLParameters]:
        """The nodes Dramatiq connects over (the broker's and every consumer's connection): read
        at each connection, without the ones whose name does not resolve now."""
        return rabbitmq.resolvable(self._nodes)

    @parameters.setter
    def parameters(self, nodes: list[pika.URLParameters]) -> None:
        self._nodes = nodes

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        return rabbitmq.queue_arguments(queue_name, self.queue_type)

    def _declare_queue(self, queue_name: str) -> Any:
        return rabbitmq.declare_one(self.channel, queue_name, self._build_queue_arguments(queue_name))

    def _declare_dq_queue(self, queue_name: str) -> Any:
        return rabbitmq.declare_one(
            self.channel, dq_name(queue_name), self._build_queue_arguments(queue_name)
        )

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return rabbitmq.declare_one(
            self.channel, xq_name(queue_name), rabbitmq.dead_letter_arguments(self.queue_type)
        )

    @property
    def consumer_class(self) -> type[ClaimingConsumer]:
        return ClaimingConsumer
