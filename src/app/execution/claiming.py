"""What every claiming consumer shares, whatever its broker: the slots a worker may claim, the
ledger's side of a burst, and the burst itself (claim what fits, settle it with the broker at
the claim, hand the claimed ones to the threads; Dramatiq's own acknowledgement after the task
only frees a slot). A broker's consumer supplies `_settle` and the deque of what it received.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from uuid import UUID

from dramatiq.broker import Broker, MessageProxy
from dramatiq.errors import ActorNotFound

from app.logs import get_logger

log = get_logger("conveyor.worker")

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

    def room(self) -> int:
        """How many jobs may be claimed now (without taking them)."""
        with self._lock:
            return max(0, self._free())

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


class BurstClaims:
    """The claiming half of a consumer: `_pending` holds what was received and not yet claimed
    (with when), `_ready` what was claimed and not yet handed out."""

    broker: Broker
    queue_name: str
    claims: Claims

    def _start_claims(self, claims: Claims) -> None:
        self.claims = claims
        self._pending: deque[tuple[Any, float]] = deque()  # unclaimed, and since when
        self._ready: deque[Any] = deque()  # claimed, settled, not yet handed out
        self._claim_pause = 0.0

    def _runnable(self, message: MessageProxy) -> bool:
        """Whether the message names a job and a task of this worker (else: log it)."""
        try:
            job_id_of(message)
            self.broker.get_actor(message.actor_name)
            return True
        except (ValueError, ActorNotFound):
            log.error(
                "message names no job or no task of this worker: sent to the dead-letter queue",
                message_id=message.message_id,
                queue=self.queue_name,
                task=message.actor_name,
            )
            return False

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
        # Ready before settled: if the broker fails now, `close` undoes these claims.
        ready = [message for message, ok in zip(burst, claimed, strict=True) if ok]
        self._ready.extend(ready)
        if unused := count - len(ready):
            self.claims.slots.give_back(unused, finished=False)
        self._settle(burst)

    def _settle(self, burst: list[Any]) -> None:
        """Acknowledge a claimed burst (claimed or refused) to the broker."""
        raise NotImplementedError

    def _unclaim_ready(self) -> None:
        """Claims that will not run here go back through the ledger (the consumer closes)."""
        ready, self._ready = list(self._ready), deque()
        if ready:
            try:
                self.claims.unclaim(ready)
            finally:
                self.claims.slots.give_back(len(ready), finished=False)

    # -- Dramatiq's side --------------------------------------------------------------------

    def ack(self, message: Any) -> None:
        """The task is done: its message was acknowledged at the claim; its slot frees."""
        self.claims.slots.give_back()

    def nack(self, message: Any) -> None:
        self.claims.slots.give_back()

    def requeue(self, messages: Any) -> None:
        """Claimed jobs that never started go back through the ledger (the middleware's shutdown)."""


def job_id_of(message: MessageProxy) -> UUID:
    """The job a message rings for; ValueError when it names none."""
    try:
        return UUID(str(message.options["job_id"]))
    except (KeyError, ValueError, TypeError):
        raise ValueError("the message names no job") from None
