"""The worker's Redis consumer: doorbells taken from Redis only as many as the slots allow,
claimed in bursts, acknowledged at the claim (`app.transport.redis`, the Lua script).

What waits stays in Redis for any worker: a consumer takes no more than its free slots, so what
it holds unclaimed is only what the ledger could not claim yet (it is away); that goes back
after WORKER_HOLD_SECONDS. What a consumer took and did not acknowledge goes back when it
stops, when it restarts, and when it is silent for min(3 heartbeats, LEASE_SECONDS) (the
relay's sweep): a killed worker's doorbells ring again before its claimed jobs' leases expire.

Only Dramatiq's public classes are used (Broker, Consumer, MessageProxy, Message): no delay
queues (the ledger delays), no Redis broker of Dramatiq's (it redelivers a dead worker's
messages after minutes, and polls).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from typing import Any

import redis
from dramatiq.broker import Broker, Consumer, MessageProxy
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from app.execution.claiming import MAX_BURST, BurstClaims, Claims
from app.logs import BROKER_OUTAGE, get_logger
from app.transport.redis import Doorbells, RedisPublisher

log = get_logger("conveyor.worker")

BEAT_EVERY_SECONDS = 1.0


class RedisDelivery(MessageProxy):
    """A message and the id it has in Redis."""

    def __init__(self, redis_id: str, message: Message[Any]) -> None:
        super().__init__(message)
        self.redis_id = redis_id


class RedisClaimingConsumer(BurstClaims, Consumer):
    """Takes what the slots allow, claims it in a burst, acknowledges it at the claim."""

    def __init__(self, broker: RedisDoorbellBroker, queue_name: str, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.wait_seconds = timeout / 1000
        self.hold_seconds = broker.hold_seconds
        self._start_claims(broker.claims)
        self._slot_free = threading.Event()
        self._beaten_at = 0.0
        self.bells = Doorbells(broker.url, queue_name, broker.consumer_name(queue_name), self.wait_seconds)
        try:
            back = self.bells.give_back()  # what this process's consumer held before it restarted
        except redis.RedisError as error:
            raise ConnectionClosed(error) from None  # type: ignore[no-untyped-call]
        if back:
            log.info("messages held before a restart went back to the queue", queue=queue_name, messages=back)
        BROKER_OUTAGE.recovered(queue=queue_name)  # connected: whatever outage there was is over

    def __next__(self) -> Any:
        try:
            if not self._ready:
                self._beat()
                self._receive()
                self._hand_back_held_too_long()
                self.claims.withdraw_stale()
                self._claim_what_fits()
        except redis.RedisError as error:
            raise ConnectionClosed(error) from None  # type: ignore[no-untyped-call]
        return self._ready.popleft() if self._ready else None

    def _beat(self) -> None:
        if time.monotonic() - self._beaten_at >= BEAT_EVERY_SECONDS:
            self.bells.beat()
            self._beaten_at = time.monotonic()

    def _receive(self) -> None:
        """Wait for a free slot, then take as many doorbells as there are free slots (waiting on
        the bell when none waits). While the ledger is away, wait for the next try instead."""
        if self._pending:
            if (pause := self._claim_pause - time.monotonic()) > 0:
                time.sleep(min(pause, self.wait_seconds))
            return
        wait = self.wait_seconds
        if self.claims.slots.room() <= 0:
            self._slot_free.clear()
            if not self.claims.slots.wait(id(self), self._slot_free.set):
                self._slot_free.wait(self.wait_seconds)
            wait = 0.0
        room = min(self.claims.slots.room(), MAX_BURST)
        if room <= 0:
            return
        for redis_id, body in self.bells.take(room, wait):
            self._add(redis_id, body)

    def _add(self, redis_id: str, body: bytes) -> None:
        try:
            message = RedisDelivery(redis_id, Message.decode(body))
        except DecodeError:
            log.error("undecodable message: sent to the dead-letter queue", queue=self.queue_name)
            self.bells.dead([redis_id])
            return
        if not self._runnable(message):
            self.bells.dead([redis_id])
            return
        self._pending.append((message, time.monotonic()))

    def _settle(self, burst: list[Any]) -> None:
        self.bells.ack([message.redis_id for message in burst])

    def _hand_back_held_too_long(self) -> None:
        deadline = time.monotonic() - self.hold_seconds
        stale = []
        while self._pending and self._pending[0][1] < deadline:
            stale.append(self._pending.popleft()[0].redis_id)
        if stale:
            self.bells.give_back(stale)
            log.warning(
                "messages held without a free thread went back to the queue",
                queue=self.queue_name,
                messages=len(stale),
                held_s=self.hold_seconds,
            )

    def close(self) -> None:
        try:
            self._unclaim_ready()
        finally:
            self._pending.clear()
            try:
                self.bells.close()  # gives back what was taken and not claimed
            except redis.RedisError:
                log.debug("Redis was away when the consumer closed: the sweep gives its messages back")


class RedisDoorbellBroker(Broker):
    """A Dramatiq broker over Redis doorbells: one claiming consumer per queue, no delay queues."""

    def __init__(
        self, *, url: str, middleware: list[Middleware], claims: Claims, hold_seconds: float
    ) -> None:
        super().__init__(middleware=middleware)
        self.url = url
        self.claims = claims
        self.hold_seconds = hold_seconds
        self.queues: set[str] = set()
        self._token = secrets.token_hex(3)

    def consumer_name(self, queue_name: str) -> str:
        """One name per process and queue: a restarted consumer finds what it held."""
        return f"{socket.gethostname()}:{os.getpid()}:{self._token}:{queue_name}"

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        return RedisClaimingConsumer(self, queue_name, timeout)

    def declare_queue(self, queue_name: str) -> None:
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self.emit_after("declare_queue", queue_name)

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Ring one doorbell (tests; the relay publishes in batches)."""
        self.emit_before("enqueue", message, delay)
        publisher = RedisPublisher(self.url)
        try:
            publisher.publish([(message, 0)])
        finally:
            publisher.close()
        self.emit_after("enqueue", message, delay)
        return message

    def get_declared_queues(self) -> set[str]:
        return self.queues.copy()

    def get_declared_delay_queues(self) -> set[str]:
        return set()

    def flush(self, queue_name: str) -> None:
        raise NotImplementedError("the ledger decides what is dropped")

    def flush_all(self) -> None:
        raise NotImplementedError("the ledger decides what is dropped")

    def join(self, queue_name: str, *, timeout: int | None = None) -> None:
        raise NotImplementedError("wait on the ledger's job states instead")
