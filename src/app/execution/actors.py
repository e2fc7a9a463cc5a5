"""Binding registered tasks to a broker as Dramatiq actors; only `app.worker` calls it.

An actor looks up the job the ledger middleware claimed for this thread and runs the task
with the payload validated by the task's model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dramatiq
import pydantic
from dramatiq.broker import Broker

from app.errors import TaskError
from app.jobs.context import current_job
from app.jobs.registry import TaskSpec


def bind(broker: Broker, specs: Iterable[TaskSpec[Any]]) -> None:
    for spec in specs:
        _declare(broker, spec)


def _declare(broker: Broker, spec: TaskSpec[Any]) -> None:
    def run(**kwargs: Any) -> None:
        ctx = current_job()
        ctx.result = spec.fn(spec.payload_model.model_validate(kwargs), ctx)

    run.__name__ = spec.name.rsplit(".", 1)[-1]
    # Task errors are outcomes, not crashes: Dramatiq logs them without a traceback.
    options: dict[str, Any] = {"throws": (TaskError, pydantic.ValidationError)}
    if spec.time_limit_seconds is not None:
        options["time_limit"] = int(spec.time_limit_seconds * 1000)
    dramatiq.actor(actor_name=spec.name, queue_name=spec.queue, broker=broker, **options)(run)
