"""The worker's RabbitMQ consumer: a message is acknowledged when its job is claimed.

Once the ledger says a worker owns a job (a lease, fenced writes, the relay's reaper), the
message has done its work: it rang. Acknowledging it at the claim means that RabbitMQ's
`consumer_timeout` (30 minutes by default) never closes a channel under a long task, and
what happens next (success, retry, death, a crash) is the ledger's business: a retry or a
reaped lease is published again by the relay, a dead job's copy goes to `<queue>.XQ` the
same way. Dramatiq's own acknowledgement after the task is then a no-op.

Two more duties, both for messages that wait in a worker without running:

- A message held longer than WORKER_HOLD_SECONDS (every thread busy with long tasks) is
  handed back to the queue for another worker, before RabbitMQ's consumer timeout would
  close the channel over it.
- The connection sends AMQP heartbeats every AMQP_HEARTBEAT_SECONDS, so RabbitMQ closes the
  connection of a frozen worker (SIGSTOP, a VM pause) after two missed ones and gives its
  waiting messages to other workers.
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import Middleware

from app.logs import BROKER_OUTAGE, get_logger

log = get_logger("conveyor.worker")


class ClaimingConsumer(_RabbitmqConsumer):
    """Acknowledges at the claim (`settle`), hands back messages held too long, ignores the
    acknowledgement Dramatiq sends for a message already settled or handed back."""

    def __init__(self, broker: ClaimingBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        BROKER_OUTAGE.recovered(queue=queue_name)  # connected: whatever outage there was is over
        self.hold_seconds = broker.hold_seconds
        self._held: dict[int, float] = {}  # delivery tag -> when it arrived
        self._done: set[int] = set()  # settled at the claim or handed back: nothing more to send
        self._lock = threading.Lock()

    def __next__(self) -> Any:
        self._hand_back_held_too_long()
        message = super().__next__()  # type: ignore[no-untyped-call]
        if message is not None:
            with self._lock:
                self._held[message._tag] = time.monotonic()
            message.consumer = self
        return message

    def settle(self, message: Any) -> None:
        """Acknowledge now: the job is claimed. A message that went back to the queue meanwhile,
        or whose connection is gone, needs nothing: its redelivery finds the job claimed."""
        with self._lock:
            if message._tag in self._done or self._held.pop(message._tag, None) is None:
                return
            self._done.add(message._tag)
        try:
            super().ack(message)  # type: ignore[no-untyped-call]
        except ConnectionClosed:
            log.debug("the claimed job's message could not be acknowledged: its connection closed")

    def handed_back(self, message: Any) -> bool:
        with self._lock:
            return message._tag in self._done and message._tag not in self._held

    def ack(self, message: Any) -> None:
        if self._forget(message._tag):
            super().ack(message)  # type: ignore[no-untyped-call]

    def nack(self, message: Any) -> None:
        if self._forget(message._tag):
            super().nack(message)  # type: ignore[no-untyped-call]

    def _forget(self, tag: int) -> bool:
        """True when Dramatiq's own ack or nack is still to be sent for this delivery."""
        with self._lock:
            if tag in self._done:
                self._done.discard(tag)
                return False
            self._held.pop(tag, None)
            return True

    def _hand_back_held_too_long(self) -> None:
        """On the consumer's own thread: reject (requeue) what waited too long for a thread."""
        deadline = time.monotonic() - self.hold_seconds
        with self._lock:
            stale = [tag for tag, since in self._held.items() if since < deadline]
            for tag in stale:
                del self._held[tag]
                self._done.add(tag)
                self.known_tags.discard(tag)
        for tag in stale:
            self.channel.basic_reject(tag, requeue=True)
        if stale:
            log.warning(
                "messages held without a free thread went back to the queue",
                queue=self.queue_name,
                messages=len(stale),
                held_s=self.hold_seconds,
            )


class ClaimingBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker with the claiming consumer and AMQP heartbeats."""

    def __init__(
        self,
        *,
        url: str,
        middleware: list[Middleware],
        max_priority: int,
        heartbeat_seconds: int,
        hold_seconds: float,
    ) -> None:
        super().__init__(url=url, confirm_delivery=True, max_priority=max_priority, middleware=middleware)
        cast(Any, self.parameters).heartbeat = heartbeat_seconds  # one URL: one URLParameters
        self.hold_seconds = hold_seconds

    @property
    def consumer_class(self) -> type[ClaimingConsumer]:
        return ClaimingConsumer
