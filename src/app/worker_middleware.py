"""The ledger middleware: claims each job before it runs and records how it ended.

Dramatiq gives two hooks that matter: raising SkipMessage before processing acknowledges a
message without running it; `message.fail()` makes the consumer nack it, and RabbitMQ
routes it to `<queue>.XQ`. Everything else (retries, delays) lives in the ledger.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import orjson
import psycopg
import pydantic
import structlog
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware, SkipMessage
from dramatiq.worker import Worker
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app import ledger
from app import worker_metrics as metrics
from app.backoff import backoff_seconds
from app.db.engine import autocommit_engine, sync_engine
from app.errors import LeaseLost, PermanentError
from app.ledger_batch import Batcher, claim_batch, succeed_batch
from app.logs import get_logger
from app.registry import get_task
from app.runtime import JobContext, peek_current, set_current
from app.settings import get_settings

log = get_logger("conveyor.worker")
T = TypeVar("T")

# How long a worker keeps retrying a ledger write while the database is unreachable.
# Past it the lease runs out and the relay hands the job to another attempt.
DB_RETRY_SECONDS = 60.0
MAX_ERROR_CHARS = 4000


class LedgerMiddleware(Middleware):
    """Claims, fences and finishes jobs in the ledger; heartbeats and renews leases."""

    # Dramatiq reads `throws` to log expected task errors without a traceback; it belongs
    # to the Retries middleware, which this broker leaves out.
    actor_options = {"throws"}  # noqa: RUF012

    def __init__(self) -> None:
        self.worker_id = ""
        self.started_at = datetime.now(UTC)
        self.processed = 0
        self._in_flight: dict[UUID, JobContext] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._queues: list[str] = []
        self._beat_engine: Engine | None = None
        self._claims: Batcher[UUID, ledger.Claim | None] | None = None
        self._successes: Batcher[tuple[ledger.Token, str], bool] | None = None

    # -- process and worker life ---------------------------------------------------------

    def after_process_boot(self, broker: Broker) -> None:
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        if not self.worker_id:
            self.after_process_boot(broker)
        self.started_at = datetime.now(UTC)
        declared = {q for q in broker.get_declared_queues() if not q.endswith(".DQ")}
        self._queues = sorted(worker.consumer_whitelist or declared)
        self._stop.clear()
        self._start_batchers()
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="conveyor-heartbeat", daemon=True
        )
        self._heartbeat.start()
        log.info("worker started", worker_id=self.worker_id, queues=self._queues)

    def _start_batchers(self) -> None:
        settings = get_settings()
        self._claims = Batcher(
            "claims", settings.libpq_url, claim_batch(self.worker_id, settings.lease_seconds)
        )
        self._successes = Batcher("successes", settings.libpq_url, succeed_batch)

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self._stop.set()
        for batcher in (self._claims, self._successes):
            if batcher is not None:
                batcher.close()
        with self._lock:
            left = list(self._in_flight)
        try:
            with sync_engine().begin() as conn:
                handed_back = ledger.release(
                    conn, self.worker_id, left, "worker shut down before the attempt finished"
                )
                conn.execute(ledger.STOP_WORKER, {"id": self.worker_id})
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
        try:
            claim = self._with_db_retry(lambda: self._claim(job_id), what="claim", job_id=job_id)
        except Exception:
            log.exception("could not claim job; the relay will publish it again", job_id=str(job_id))
            raise SkipMessage("claim failed") from None
        if claim is None:
            metrics.JOBS_SKIPPED.labels(message.queue_name).inc()
            log.info(
                "message skipped: job is not claimable (finished, running elsewhere or not due)",
                job_id=str(job_id),
                redelivered=bool(getattr(message, "redelivered", False)),
            )
            raise SkipMessage("job is not claimable")
        ctx = JobContext(claim.token, claim.task, claim.max_attempts, self.worker_id)
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
            self._finish(ctx, message, exception)
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

    # -- outcomes ---------------------------------------------------------------------------

    def _finish(self, ctx: JobContext, message: MessageProxy, exc: BaseException | None) -> None:
        duration = time.monotonic() - ctx.started
        labels = (ctx.task, message.queue_name)
        task_metrics = metrics.for_task(*labels)
        task_metrics.duration.observe(duration)
        if exc is None:
            try:
                result_json = orjson.dumps(ctx.result).decode()
            except TypeError as not_json:
                exc = PermanentError(f"the task returned a result that is not JSON: {not_json}")
            else:
                if self._succeed(ctx, result_json):
                    task_metrics.succeeded.inc()
                    log.info("job succeeded", duration_s=round(duration, 4))
                else:
                    self._refused(ctx, labels)
                return
        ctx.discard_effects()
        if isinstance(exc, LeaseLost):
            self._refused(ctx, labels)
            return
        error = _describe(exc)
        permanent = isinstance(exc, PermanentError | pydantic.ValidationError)
        if permanent or ctx.attempt >= ctx.max_attempts:
            owned = self._write(lambda conn: ledger.bury(conn, ctx.token, error), ctx)
            if not owned:
                self._refused(ctx, labels)
                return
            message.fail()  # nack: RabbitMQ dead-letters it to <queue>.XQ
            task_metrics.dead.inc()
            reason = "permanent error" if permanent else "attempts used up"
            log.error("job dead", reason=reason, error=error, duration_s=round(duration, 4))
            return
        delay = _retry_delay(ctx)
        if self._write(lambda conn: ledger.retry(conn, ctx.token, error, delay), ctx):
            task_metrics.retried.inc()
            log.warning(
                f"job retrying in {delay:.3f}s",
                retry_in_s=round(delay, 3),
                error=error,
                duration_s=round(duration, 4),
            )
        else:
            self._refused(ctx, labels)

    def _succeed(self, ctx: JobContext, result_json: str) -> bool:
        if ctx.effects is not None:
            conn = ctx.effects
            try:
                owned = ledger.succeed(conn, ctx.token, result_json)
                if owned:
                    conn.commit()
                    conn.close()
                    ctx.effects = None
                    return True
            except DBAPIError:
                log.exception("could not commit the job's effects; it will be retried")
                ctx.discard_effects()
                delay = _retry_delay(ctx)
                msg = "database error while committing the job's effects"
                return self._write(lambda c: ledger.retry(c, ctx.token, msg, delay), ctx)
            ctx.discard_effects()
            return False
        try:
            return self._with_db_retry(
                lambda: self._batchers()[1].submit((ctx.token, result_json)),
                what="finish",
                job_id=ctx.token.job_id,
            )
        except Exception:
            log.exception("could not record the outcome; the lease will expire and it will rerun")
            return False

    def _claim(self, job_id: UUID) -> ledger.Claim | None:
        return self._batchers()[0].submit(job_id)

    def _batchers(
        self,
    ) -> tuple[Batcher[UUID, ledger.Claim | None], Batcher[tuple[ledger.Token, str], bool]]:
        if self._claims is None or self._successes is None:
            self._start_batchers()  # a broker used without `dramatiq`'s worker boot (tests)
        assert self._claims is not None
        assert self._successes is not None
        return self._claims, self._successes

    def _refused(self, ctx: JobContext, labels: tuple[str, str]) -> None:
        metrics.for_task(*labels).fenced.inc()
        log.warning(
            "late write refused: this attempt lost its lease and another owns the job",
            worker_id=self.worker_id,
        )

    def _write(self, fn: Callable[[Any], bool], ctx: JobContext) -> bool:
        def attempt() -> bool:
            with autocommit_engine().connect() as conn:
                return fn(conn)

        try:
            return self._with_db_retry(attempt, what="finish", job_id=ctx.token.job_id)
        except Exception:
            log.exception("could not record the outcome; the lease will expire and it will rerun")
            return False

    def _with_db_retry(self, fn: Callable[[], T], *, what: str, job_id: UUID) -> T:
        deadline = time.monotonic() + DB_RETRY_SECONDS
        pause = 0.1
        while True:
            try:
                return fn()
            except (OperationalError, PoolTimeout, psycopg.OperationalError):  # down, or busy everywhere
                if time.monotonic() > deadline:
                    raise
                log.warning(f"database unavailable during {what}; retrying", job_id=str(job_id))
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    # -- heartbeat --------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        settings = get_settings()
        interval = min(settings.heartbeat_seconds, settings.lease_seconds / 3)
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception:
                log.warning("heartbeat failed", exc_info=True)
            self._stop.wait(interval)

    def beat(self) -> None:
        with self._lock:
            job_ids = list(self._in_flight)
        settings = get_settings()
        if self._beat_engine is None:
            # Lease renewal must never queue behind the task threads it protects: with the
            # shared pool busy, leases of healthy jobs expired and their work was thrown away.
            self._beat_engine = create_engine(settings.database_url, pool_size=1, max_overflow=0)
        with self._beat_engine.begin() as conn:
            conn.execute(
                ledger.UPSERT_WORKER,
                {
                    "id": self.worker_id,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "queues": orjson.dumps(self._queues).decode(),
                    "started_at": self.started_at,
                    "in_flight": len(job_ids),
                    "processed": self.processed,
                },
            )
            ledger.renew_leases(conn, self.worker_id, job_ids, settings.lease_seconds)


def _job_id_of(message: MessageProxy) -> UUID | None:
    try:
        return UUID(str(message.options["job_id"]))
    except (KeyError, ValueError, TypeError):
        return None


def _retry_delay(ctx: JobContext) -> float:
    spec = get_task(ctx.task)
    if spec is None:
        settings = get_settings()
        return backoff_seconds(ctx.attempt, settings.retry_backoff_base, settings.retry_backoff_max)
    policy = spec.retry
    return backoff_seconds(ctx.attempt, policy.resolved_base(), policy.resolved_max())


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
