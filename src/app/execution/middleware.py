"""The ledger middleware: claims each job before it runs and records how it ended.

Dramatiq gives two hooks that matter: raising SkipMessage before processing acknowledges a
message without running it; `message.fail()` makes the consumer nack it, and RabbitMQ
routes it to `<queue>.XQ`. Everything else (retries, delays) lives in the ledger. The
hooks stay thin: the writes are in `writes`, the outcomes in `outcomes`, the heartbeat in
`heartbeat`.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware, SkipMessage
from dramatiq.worker import Worker

from app.execution import metrics, outcomes
from app.execution.heartbeat import Heartbeat
from app.execution.writes import LedgerWrites
from app.jobs.context import JobContext, peek_current, set_current
from app.ledger.jobs import Doorbell
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
        self._in_flight: dict[UUID, JobContext] = {}
        self._lock = threading.Lock()
        self._heartbeat: Heartbeat | None = None

    # -- process and worker life ---------------------------------------------------------

    def after_process_boot(self, broker: Broker) -> None:
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.writes.worker_id = self.worker_id

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        # Claimed messages are acknowledged at once (see `consumer`), so the prefetch is what a
        # worker holds besides what it runs: one per thread keeps every thread fed.
        worker.queue_prefetch = get_settings().worker_prefetch or worker.worker_threads

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        if not self.worker_id:
            self.after_process_boot(broker)
        declared = {q for q in broker.get_declared_queues() if not q.endswith(".DQ")}
        queues = sorted(worker.consumer_whitelist or declared)
        self.writes.start(self.worker_id)
        self._heartbeat = Heartbeat(self.worker_id, queues, datetime.now(UTC), self._snapshot)
        self._heartbeat.start()
        log.info("worker started", worker_id=self.worker_id, queues=queues)

    def _snapshot(self) -> tuple[list[UUID], int]:
        with self._lock:
            return list(self._in_flight), self.processed

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        self.writes.close()
        left, _ = self._snapshot()
        try:
            handed_back = self.writes.hand_back(left)
            log.info("worker stopped", worker_id=self.worker_id, handed_back=handed_back)
        except Exception:
            log.exception("could not record the worker's shutdown", worker_id=self.worker_id)

    # -- one message ------------------------------------------------------------------------

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        job_id = _job_id_of(message)
        if job_id is None:
            log.error(
                "message carries no job id: sent to the dead-letter queue",
                message_id=message.message_id,
                queue=message.queue_name,
            )
            message.fail()
            return
        consumer = getattr(message, "consumer", None)
        if consumer is not None and consumer.handed_back(message):
            raise SkipMessage("handed back to the queue: another worker runs it")
        try:
            claim = self.writes.claim(Doorbell(job_id, message.actor_name))
        except Exception:
            log.exception("could not claim job; the relay will publish it again", job_id=str(job_id))
            raise SkipMessage("claim failed") from None
        if claim is None:
            self._not_claimed(job_id, message)
            raise SkipMessage("job is not claimable")
        if consumer is not None:
            consumer.settle(message)
        ctx = JobContext(claim.token, claim.task, claim.max_attempts, self.worker_id, claim.payload_json)
        set_current(ctx)
        with self._lock:
            self._in_flight[job_id] = ctx
        structlog.contextvars.bind_contextvars(
            job_id=str(job_id), task=claim.task, attempt=claim.token.attempt, run=claim.token.run
        )
        task_metrics = metrics.for_task(claim.task, message.queue_name)
        task_metrics.started.inc()
        task_metrics.in_progress.inc()
        log.info("job started", max_attempts=claim.max_attempts)

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


def _job_id_of(message: MessageProxy) -> UUID | None:
    try:
        return UUID(str(message.options["job_id"]))
    except (KeyError, ValueError, TypeError):
        return None
