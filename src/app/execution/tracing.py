"""The run span: each run of a job traced as a child of the span that enqueued it.

Added to the broker only when tracing is on (see app.tracing), so a worker without it pays
for no hook. It comes after the ledger middleware: its `before` sees the claimed job, and its
`after` (Dramatiq calls those in reverse) ends the span before the ledger records the outcome.
"""

from __future__ import annotations

from typing import Any, cast

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware

from app import tracing
from app.jobs.context import peek_current

# Where the open span of a message's run rides, as the ledger's claim rides on it.
SPAN_ATTRIBUTE = "conveyor_span"


class RunSpans(Middleware):
    """Starts a span `run <task>` when a claimed job starts and ends it when the job ends."""

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        ctx = peek_current()
        if ctx is None:
            return
        attributes = {
            "conveyor.job.id": ctx.job_id,
            "conveyor.job.attempt": ctx.token.attempt,
            "conveyor.job.run": ctx.token.run,
            "conveyor.task": ctx.task,
            "messaging.destination.name": message.queue_name,
        }
        opened = tracing.start_run(ctx.trace_context, f"run {ctx.task}", attributes)
        setattr(cast(Any, message), SPAN_ATTRIBUTE, opened)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self._end(message, exception)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._end(message, None)

    def _end(self, message: MessageProxy, exception: BaseException | None) -> None:
        opened = getattr(message, SPAN_ATTRIBUTE, None)
        if opened is None:
            return
        delattr(cast(Any, message), SPAN_ATTRIBUTE)
        span, token = opened
        tracing.end_run(span, token, exception)
