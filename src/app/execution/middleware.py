"""The ledger middleware: claims jobs for the consumer, runs what was claimed, records how it ended.

The claiming consumer (see `consumer`) asks `claim_burst` for the jobs of a burst of
messages and hands only the claimed ones to the threads; on another broker (Dramatiq's stub
broker in tests) each message is claimed here before it runs. Raising SkipMessage before
processing acknowledges a message without running it. Everything else (retries, delays)
lives in the ledger. The hooks stay thin: the writes are in `writes`, the outcomes in
`outcomes`, the heartbeat in `heartbeat`, cancel requests in `cancels`.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import structlog
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware, SkipMessage
from dramatiq.worker import Worker

from app.execution import metrics, outcomes
from app.execution.cancels import CancelWatcher
from app.execution.consumer import AHEAD_HORIZON_SECONDS, Slots, job_id_of
from app.execution.heartbeat import Heartbeat
from app.execution.shutdown import log_repeated_stops, tolerate_repeated_stop_signals
from app.execution.writes import LedgerWrites
from app.jobs.context import JobContext, peek_current, set_current
from app.ledger.jobs import Claim, Doorbell
from app.logs import get_logger
from app.settings import get_settings

log = get_logger("conveyor.worker")


class LedgerMiddleware(Middleware):
    """Claims, fences and finishes jobs in the ledger; heartbeats and renews leases."""

    # Dramatiq reads `throws` to log expected task errors without a traceback; it belongs
    # to the Retries middleware, which this broker leaves out.
    actor_options = {"throws"}  # noqa: RUF012

    def __init__(self) -> None:
        self.worker_id = ""
        self.processed = 0
        self.writes = LedgerWrites()
        self.slots = Slots()
        self._in_flight: dict[UUID, JobContext] = {}  # claimed here and not finished
        # Of those, claimed by the consumer and not started yet, with when (oldest first).
        self._waiting: dict[UUID, tuple[JobContext, float]] = {}
        self._lock = threading.Lock()
        self._heartbeat: Heartbeat | None = None
        self._cancels: CancelWatcher | None = None

    # -- process and worker life ---------------------------------------------------------

    def after_process_boot(self, broker: Broker) -> None:
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.writes.worker_id = self.worker_id
        if threading.current_thread() is threading.main_thread():
            tolerate_repeated_stop_signals()

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        # Claimed messages are acknowledged at once (see `consumer`), so the prefetch is what
        # RabbitMQ sends a worker ahead of its claims. Four per thread is as many as the
        # consumer may claim (one per thread and three ahead), so one burst fills them and
        # the consumer never waits on a delivery (measured in docs/benchmarks.md).
        settings = get_settings()
        worker.queue_prefetch = settings.worker_prefetch or 4 * worker.worker_threads
        ahead = settings.worker_claim_ahead
        self.slots.configure(worker.worker_threads, 3 * worker.worker_threads if ahead < 0 else ahead)

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        if not self.worker_id:
            self.after_process_boot(broker)
        declared = {q for q in broker.get_declared_queues() if not q.endswith(".DQ")}
        queues = sorted(worker.consumer_whitelist or declared)
        self.writes.start(self.worker_id)
        self._heartbeat = Heartbeat(self.worker_id, queues, datetime.now(UTC), self._snapshot)
        self._heartbeat.start()
        self._cancels = CancelWatcher(self._held)
        self._cancels.start()
        log.info("worker started", worker_id=self.worker_id, queues=queues)

    def _snapshot(self) -> tuple[list[UUID], int]:
        with self._lock:
            return list(self._in_flight), self.processed

    def _held(self) -> list[JobContext]:
        with self._lock:
            return list(self._in_flight.values())

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self.slots.close()  # the consumers claim nothing more
        log_repeated_stops()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        log_repeated_stops()  # those that came while the running jobs finished
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._cancels is not None:
            self._cancels.stop()
        self.writes.close()
        with self._lock:
            started = [job_id for job_id in self._in_flight if job_id not in self._waiting]
            not_started = [ctx.token for ctx, _ in self._waiting.values()]
        try:
            handed_back = self.writes.hand_back(started, not_started)
            log.info("worker stopped", worker_id=self.worker_id, handed_back=handed_back)
        except Exception:
            log.exception("could not record the worker's shutdown", worker_id=self.worker_id)

    # -- claims ---------------------------------------------------------------------------

    def claim_burst(self, messages: Sequence[MessageProxy]) -> list[bool]:
        """For the consumer: claim a burst in one statement; each claim rides on its message."""
        bells = [Doorbell(job_id_of(message), message.actor_name) for message in messages]
        claims, held = self.writes.claim_burst(bells)
        claimed = []
        for bell, message, claim in zip(bells, messages, claims, strict=True):
            if claim is None:
                if bell.job_id in held:
                    metrics.JOBS_HELD.labels(message.queue_name).inc()
                else:
                    self._not_claimed(bell.job_id, message)
                claimed.append(False)
                continue
            ctx = self._context(claim)
            cast(Any, message).conveyor_job = ctx
            with self._lock:
                self._in_flight[bell.job_id] = ctx
                self._waiting[bell.job_id] = (ctx, time.monotonic())
            claimed.append(True)
        return claimed

    def withdraw_stale(self) -> None:
        """For the consumer: claims made ahead that no thread started in time are undone; their
        messages, still queued for a thread, are skipped when one gets to them."""
        deadline = time.monotonic() - AHEAD_HORIZON_SECONDS
        with self._lock:
            if not self._waiting or next(iter(self._waiting.values()))[1] > deadline:
                return
            stale = [ctx for ctx, since in self._waiting.values() if since <= deadline]
            for ctx in stale:
                del self._waiting[ctx.token.job_id]
                del self._in_flight[ctx.token.job_id]
        try:
            self.writes.unclaim([ctx.token for ctx in stale])
        except Exception:
            log.exception("could not undo claims; their leases will run out and the relay reaps them")
            return
        log.info("claims made ahead went back to the queue: the threads are busy", jobs=len(stale))

    def unclaim(self, messages: Sequence[MessageProxy]) -> None:
        """For the consumer: claims it could not hand out (it closed) are undone in the ledger."""
        contexts: list[JobContext] = [m.conveyor_job for m in messages if hasattr(m, "conveyor_job")]
        try:
            self.writes.unclaim([ctx.token for ctx in contexts])
        except Exception:
            log.exception("could not undo claims; their leases will run out and the relay reaps them")
        with self._lock:
            for ctx in contexts:
                if self._waiting.get(ctx.token.job_id, (None,))[0] is ctx:
                    del self._waiting[ctx.token.job_id]
                if self._in_flight.get(ctx.token.job_id) is ctx:
                    del self._in_flight[ctx.token.job_id]

    def _context(self, claim: Claim) -> JobContext:
        return JobContext(
            claim.token,
            claim.task,
            claim.max_attempts,
            self.worker_id,
            claim.payload_json,
            claim.trace_context,
        )

    # -- one message ------------------------------------------------------------------------

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        ctx: JobContext | None = getattr(message, "conveyor_job", None)
        if ctx is None:
            ctx = self._claim_one(message)  # not from the claiming consumer (the stub broker)
            with self._lock:
                self._in_flight[ctx.token.job_id] = ctx
        else:
            with self._lock:
                if self._waiting.get(ctx.token.job_id, (None,))[0] is not ctx:
                    raise SkipMessage("its claim was withdrawn: another worker runs it")
                del self._waiting[ctx.token.job_id]
        job_id = ctx.token.job_id
        ctx.started = time.monotonic()
        set_current(ctx)
        structlog.contextvars.bind_contextvars(
            job_id=str(job_id), task=ctx.task, attempt=ctx.token.attempt, run=ctx.token.run
        )
        task_metrics = metrics.for_task(ctx.task, message.queue_name)
        task_metrics.started.inc()
        task_metrics.in_progress.inc()
        # At debug: one line per job at info, written when it ends (a third of the worker's
        # CPU per noop job went to its two lines). The ledger and the dashboard show what runs.
        log.debug("job started", max_attempts=ctx.max_attempts)

    def _claim_one(self, message: MessageProxy) -> JobContext:
        try:
            job_id = job_id_of(message)
        except ValueError:
            log.error(
                "message carries no job id: sent to the dead-letter queue",
                message_id=message.message_id,
                queue=message.queue_name,
            )
            message.fail()
            raise SkipMessage("no job id") from None
        try:
            claim = self.writes.claim(Doorbell(job_id, message.actor_name))
        except Exception:
            log.exception("could not claim job; the relay will publish it again", job_id=str(job_id))
            raise SkipMessage("claim failed") from None
        if claim is None:
            self._not_claimed(job_id, message)
            raise SkipMessage("job is not claimable")
        return self._context(claim)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        ctx = peek_current()
        if ctx is None:
            return
        try:
            outcomes.finish(self.writes, ctx, message, exception)
        finally:
            set_current(None)
            with self._lock:
                # Only our own entry: after a lost lease this worker may be running the job's
                # next attempt too, and that one's lease must go on being renewed.
                if self._in_flight.get(ctx.token.job_id) is ctx:
                    del self._in_flight[ctx.token.job_id]
                self.processed += 1
            metrics.for_task(ctx.task, message.queue_name).in_progress.dec()
            structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        set_current(None)

    def _not_claimed(self, job_id: UUID, message: MessageProxy) -> None:
        known = self.writes.job_task(job_id)
        if known is not None and known[0] != message.actor_name:
            metrics.MESSAGES_REFUSED.labels(message.queue_name, "task_mismatch").inc()
            log.warning(
                "message refused: it names another task than the ledger holds for its job",
                job_id=str(job_id),
                message_task=message.actor_name,
                ledger_task=known[0],
            )
            return
        metrics.JOBS_SKIPPED.labels(message.queue_name).inc()
        log.info(
            "message skipped: job is not claimable (finished, running elsewhere or not due)",
            job_id=str(job_id),
            redelivered=bool(getattr(message, "redelivered", False)),
        )
