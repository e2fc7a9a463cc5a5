"""Binding registered tasks to a broker as Dramatiq actors; only `app.worker` calls it.

An actor name only routes a message to a queue's consumer. What runs is the job the ledger
middleware claimed for this thread: the task and the payload the ledger holds for it,
validated by the task's model. The message's own arguments are never read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dramatiq
import pydantic
from dramatiq.broker import Broker

from app.errors import Cancelled, PermanentError, TaskError, UseEnqueue
from app.execution.cancels import run_task
from app.jobs.context import current_job
from app.jobs.registry import TaskSpec, get_task


class LedgerActor(dramatiq.Actor):  # type: ignore[type-arg]
    """An actor whose messages only the relay sends: a message sent straight from code would
    bypass the ledger (no row: never run, a silent dead letter), so sending one is an error
    that says what to do instead."""

    def send(self, *args: Any, **kwargs: Any) -> Any:
        raise UseEnqueue(self.actor_name)

    def send_with_options(self, *args: Any, **kwargs: Any) -> Any:
        raise UseEnqueue(self.actor_name)


def bind(broker: Broker, specs: Iterable[TaskSpec[Any]]) -> None:
    for spec in specs:
        _declare(broker, spec)


def _declare(broker: Broker, spec: TaskSpec[Any]) -> None:
    def run(*_message_args: Any, **_message_kwargs: Any) -> None:
        run_claimed_job()

    run.__name__ = spec.name.rsplit(".", 1)[-1]
    # Task errors and cancellations are outcomes, not crashes: Dramatiq logs them without a traceback.
    options: dict[str, Any] = {"throws": (TaskError, pydantic.ValidationError, Cancelled)}
    if spec.time_limit_seconds is not None:
        options["time_limit"] = int(spec.time_limit_seconds * 1000)
    dramatiq.actor(
        actor_class=LedgerActor, actor_name=spec.name, queue_name=spec.queue, broker=broker, **options
    )(run)


def run_claimed_job() -> None:
    """Run the job this thread claimed, as the ledger holds it."""
    ctx = current_job()
    spec = get_task(ctx.task)
    if spec is None:
        raise PermanentError(f"this worker has no task {ctx.task!r}")
    ctx.result = run_task(ctx, lambda: spec.fn(spec.payload_model.model_validate_json(ctx.payload_json), ctx))
