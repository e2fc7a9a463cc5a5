"""How an attempt ended, written to the ledger: succeeded, retrying, dead, cancelled, or refused by
the fence."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pydantic
import structlog
from dramatiq.broker import MessageProxy

from app.errors import Cancelled, LeaseLost, PermanentError
from app.execution import metrics
from app.execution.writes import LedgerWrites
from app.jobs.context import JobContext
from app.jobs.registry import retry_delay
from app.logs import get_logger

log = get_logger("conveyor.worker")

MAX_ERROR_CHARS = 4000


def finish(writes: LedgerWrites, ctx: JobContext, message: MessageProxy, exc: BaseException | None) -> None:
    duration = time.monotonic() - ctx.started
    task_metrics = metrics.for_task(ctx.task, message.queue_name)
    task_metrics.duration.observe(duration)
    if exc is None:
        try:
            result_json = orjson.dumps(ctx.result).decode()
        except TypeError as not_json:
            exc = PermanentError(f"the task returned a result that is not JSON: {not_json}")
        else:
            queue = message.queue_name
            fields = structlog.contextvars.get_contextvars()  # the job's, for the batcher's thread

            def recorded(owned: bool) -> None:
                if owned:
                    task_metrics.succeeded.inc()
                    log.info("job succeeded", duration_s=round(duration, 4), **fields)
                else:
                    refused(ctx, queue, writes.worker_id, **fields)

            writes.succeed(ctx, result_json, recorded)
            return
    ctx.discard_effects()
    if isinstance(exc, LeaseLost):
        refused(ctx, message.queue_name, writes.worker_id)
        return
    if isinstance(exc, Cancelled):
        _cancelled(writes, ctx, message, duration)
        return
    _failed(writes, ctx, message, exc, duration)


def _cancelled(writes: LedgerWrites, ctx: JobContext, message: MessageProxy, duration: float) -> None:
    how = "interrupted after its grace" if ctx.interrupted else "the task stopped"
    if not writes.cancelled(ctx.token, f"cancelled while running: {how}"):
        refused(ctx, message.queue_name, writes.worker_id)
        return
    metrics.for_task(ctx.task, message.queue_name).cancelled.inc()
    log.info("job cancelled", interrupted=ctx.interrupted, duration_s=round(duration, 4))


def _failed(
    writes: LedgerWrites, ctx: JobContext, message: MessageProxy, exc: BaseException, duration: float
) -> None:
    task_metrics = metrics.for_task(ctx.task, message.queue_name)
    error = describe(exc)
    permanent = isinstance(exc, PermanentError | pydantic.ValidationError)
    if permanent or ctx.attempt >= ctx.max_attempts:
        if not writes.bury(ctx.token, error):
            refused(ctx, message.queue_name, writes.worker_id)
            return
        task_metrics.dead.inc()  # the relay puts its copy in <queue>.XQ
        reason = "permanent error" if permanent else "attempts used up"
        log.error("job dead", reason=reason, error=error, duration_s=round(duration, 4))
        return
    delay = retry_delay(ctx.task, ctx.attempt)
    state = writes.retry(ctx.token, error, delay)
    if state == "cancelled":  # its cancellation was asked: never retried
        task_metrics.cancelled.inc()
        log.info("job cancelled: it failed after its cancellation was asked", error=error)
    elif state is not None:
        task_metrics.retried.inc()
        log.warning(
            f"job retrying in {delay:.3f}s",
            retry_in_s=round(delay, 3),
            error=error,
            duration_s=round(duration, 4),
        )
    else:
        refused(ctx, message.queue_name, writes.worker_id)


def refused(ctx: JobContext, queue: str, worker_id: str, **fields: Any) -> None:
    metrics.for_task(ctx.task, queue).fenced.inc()
    log.warning(
        "late write refused: this attempt lost its lease and another owns the job",
        worker_id=worker_id,
        **fields,
    )


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
