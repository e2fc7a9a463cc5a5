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

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from uuid import UUID

import pika.exceptions
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer, _RabbitmqMessage
from dramatiq.common import dq_name, xq_name
from dramatiq.errors import ActorNotFound, ConnectionClosed, DecodeError
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from app.logs import BROKER_OUTAGE, get_logger
from app.transport import rabbitmq

log = get_logger("conveyor.worker")

AMQP_ERRORS = (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError)
MAX_BURST = 256  # messages claimed in one statement at most
CLAIM_RETRY_SECONDS = 0.5  # after a burst could not be claimed (the ledger is away)
AHEAD_HORIZON_SECONDS = 1.0  # claimed ahead: what the threads start within this, at their pace
PACE_WINDOW_SECONDS = 0.1  # how often that pace is measured
PACE_MEMORY_SECONDS = 0.5  # and how long it is remembered


class Slots:
    """How many jobs a worker process may claim now: one per thread, and ahead of its threads
    at most what they start in AHEAD_HORIZON_SECONDS at the pace they finish jobs now (none
    for long tasks, up to `ahead` for short ones). A consumer waiting for a slot is woken
    when one frees."""

    def __init__(self) -> None:
        self.threads = 0
        self.ahead = 0
        self._claimed = 0  # claimed and not finished
        self._closed = False
        self._finished = 0  # since the pace was last measured
        self._measured_at = time.monotonic()
        self._pace = 0.0  # jobs finished per second, smoothed
        self._lock = threading.Lock()
        self._waiting: dict[int, Callable[[], None]] = {}

    def configure(self, threads: int, ahead: int) -> None:
        with self._lock:
            self.threads, self.ahead = threads, ahead

    def take(self, wanted: int) -> int:
        with self._lock:
            taken = max(0, min(wanted, self._free()))
            self._claimed += taken
            return taken

    def give_back(self, count: int = 1, *, finished: bool = True) -> None:
        with self._lock:
            self._claimed -= count
            if finished:
                self._finished += count
            wake, self._waiting = list(self._waiting.values()), {}
        for callback in wake:
            callback()

    def wait(self, waiter: int, wake: Callable[[], None]) -> bool:
        """True when a slot is free now; otherwise `wake` is called when one frees."""
        with self._lock:
            if self._free() > 0:
                return True
            self._waiting[waiter] = wake
            return False

    def close(self) -> None:
        """No more claims (the worker is shutting down)."""
        with self._lock:
            self._closed = True

    def _free(self) -> int:
        if self._closed:
            return 0
        now = time.monotonic()
        if (elapsed := now - self._measured_at) >= PACE_WINDOW_SECONDS:
            weight = min(1.0, elapsed / PACE_MEMORY_SECONDS)  # a long gap forgets the old pace
            self._pace += weight * (self._finished / elapsed - self._pace)
            self._finished, self._measured_at = 0, now
        ahead = min(self.ahead, int(self._pace * AHEAD_HORIZON_SECONDS))
        return self.threads + ahead - self._claimed


class Claims(Protocol):
    """The ledger side of a burst (the ledger middleware)."""

    slots: Slots

    def claim_burst(self, messages: Sequence[MessageProxy]) -> list[bool]:
        """Claim the jobs these messages ring for, attaching each claim to its message; False
        for a message whose job is not claimable. Raises when the ledger cannot be written."""
        ...

    def unclaim(self, messages: Sequence[MessageProxy]) -> None:
        """Give back claims that will not run here: the consumer closed before handing them out."""
        ...

    def withdraw_stale(self) -> None:
        """Give back claims made ahead that no thread started within AHEAD_HORIZON_SECONDS."""
        ...


class ClaimingConsumer(_RabbitmqConsumer):
    """Claims in bursts, acknowledges at the claim, hands back messages held too long, and
    ignores the acknowledgement Dramatiq sends when a task is done."""

    def __init__(self, broker: ClaimingBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        BROKER_OUTAGE.recovered(queue=queue_name)  # connected: whatever outage there was is over
        self.claims = broker.claims
        self.hold_seconds = broker.hold_seconds
        self.wait_seconds = timeout / 1000
        self._pending: deque[tuple[_RabbitmqMessage, float]] = deque()  # unclaimed, and since when
        self._ready: deque[_RabbitmqMessage] = deque()  # claimed, acknowledged, not yet handed out
        self._claim_pause = 0.0

    def __next__(self) -> Any:
        try:
            if not self._ready:
                self._receive()
                self._hand_back_held_too_long()
                self.claims.withdraw_stale()
                self._claim_what_fits()
        except AMQP_ERRORS as error:
            if getattr(error, "reply_code", None) == 404:
                self.broker.queues_pending.add(self.queue_name)
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
        try:
            job_id_of(message)
            named = self._has_actor(message.actor_name)
        except ValueError:
            named = False
        if not named:
            log.error(
                "message names no job or no task of this worker: sent to the dead-letter queue",
                message_id=message.message_id,
                queue=self.queue_name,
                task=message.actor_name,
            )
            self.channel.basic_nack(tag, requeue=False)
            return
        self._pending.append((message, time.monotonic()))

    def _has_actor(self, name: str) -> bool:
        try:
            self.broker.get_actor(name)
        except ActorNotFound:
            return False
        return True

    # -- claiming -------------------------------------------------------------------------

    def _claim_what_fits(self) -> None:
        if not self._pending or time.monotonic() < self._claim_pause:
            return
        count = self.claims.slots.take(len(self._pending))
        if count == 0:
            return
        taken = [self._pending.popleft() for _ in range(count)]
        burst = [message for message, _ in taken]
        try:
            claimed = self.claims.claim_burst(burst)
        except Exception:
            # The ledger is away (logged by the writes): they stay held, tried again shortly.
            self.claims.slots.give_back(count, finished=False)
            self._pending.extendleft(reversed(taken))
            self._claim_pause = time.monotonic() + CLAIM_RETRY_SECONDS
            return
        # Ready before acknowledged: if the channel fails now, `close` undoes these claims.
        ready = [message for message, ok in zip(burst, claimed, strict=True) if ok]
        self._ready.extend(ready)
        if unused := count - len(ready):
            self.claims.slots.give_back(unused, finished=False)
        self._settle(burst)

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

    # -- Dramatiq's side --------------------------------------------------------------------

    def ack(self, message: Any) -> None:
        """The task is done: its message was acknowledged at the claim; its slot frees."""
        self.claims.slots.give_back()

    def nack(self, message: Any) -> None:
        self.claims.slots.give_back()

    def requeue(self, messages: Any) -> None:
        """Claimed jobs that never started go back through the ledger (the middleware's shutdown)."""

    def close(self) -> None:
        ready, self._ready = list(self._ready), deque()
        if ready:
            try:
                self.claims.unclaim(ready)
            finally:
                self.claims.slots.give_back(len(ready), finished=False)
        try:
            super().close()  # type: ignore[no-untyped-call]
        except ConnectionClosed:
            log.debug("the consumer's connection was already closed")


def job_id_of(message: MessageProxy) -> UUID:
    """The job a message rings for; ValueError when it names none."""
    try:
        return UUID(str(message.options["job_id"]))
    except (KeyError, ValueError, TypeError):
        raise ValueError("the message names no job") from None


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
