"""Public tasks: a name, a payload model, a queue and a retry policy each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

import dramatiq
import pydantic
from pydantic import BaseModel, ConfigDict

from app.errors import TaskError
from app.runtime import JobContext, current_job
from app.settings import get_settings


class Queue(StrEnum):
    DEFAULT = "default"
    EMAIL = "email"
    EXPORTS = "exports"


class Payload(BaseModel):
    """Base of every task's payload: undeclared fields are refused."""

    model_config = ConfigDict(extra="forbid")


P = TypeVar("P", bound=Payload)
TaskFn = Callable[[P, JobContext], Any]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int | None = None
    backoff_base: float | None = None
    backoff_max: float | None = None

    def resolved_max_attempts(self) -> int:
        return self.max_attempts or get_settings().retry_max_attempts

    def resolved_base(self) -> float:
        base = self.backoff_base
        return get_settings().retry_backoff_base if base is None else base

    def resolved_max(self) -> float:
        cap = self.backoff_max
        return get_settings().retry_backoff_max if cap is None else cap


@dataclass(frozen=True)
class TaskSpec(Generic[P]):
    name: str
    payload_model: type[P]
    fn: TaskFn[P]
    queue: str
    retry: RetryPolicy
    time_limit_seconds: float | None
    public: bool
    description: str


_registry: dict[str, TaskSpec[Any]] = {}


def task(
    payload: type[P],
    *,
    queue: Queue | str = Queue.DEFAULT,
    max_attempts: int | None = None,
    backoff_base: float | None = None,
    backoff_max: float | None = None,
    time_limit_seconds: float | None = None,
    public: bool = True,
) -> Callable[[TaskFn[P]], TaskSpec[P]]:
    """Register a function as a task named `<module>.<function>` and declare its actor."""

    def register(fn: TaskFn[P]) -> TaskSpec[P]:
        name = f"{fn.__module__}.{fn.__name__}"
        spec = TaskSpec(
            name=name,
            payload_model=payload,
            fn=fn,
            queue=str(queue),
            retry=RetryPolicy(max_attempts, backoff_base, backoff_max),
            time_limit_seconds=time_limit_seconds,
            public=public,
            description=(fn.__doc__ or "").strip().split("\n")[0],
        )

        def actor_fn(**kwargs: Any) -> None:
            ctx = current_job()
            ctx.result = fn(payload.model_validate(kwargs), ctx)

        actor_fn.__name__ = fn.__name__
        # Task errors are outcomes, not crashes: Dramatiq logs them without a traceback.
        options: dict[str, Any] = {"throws": (TaskError, pydantic.ValidationError)}
        if time_limit_seconds is not None:
            options["time_limit"] = int(time_limit_seconds * 1000)
        from app.worker import broker  # the broker is set before any actor is declared

        declare = dramatiq.actor(actor_name=name, queue_name=str(queue), broker=broker, **options)
        declare(actor_fn)
        _registry[name] = spec
        return spec

    return register


def get_task(name: str) -> TaskSpec[Any] | None:
    return _registry.get(name)


def public_tasks() -> list[TaskSpec[Any]]:
    return [spec for spec in _registry.values() if spec.public]


def all_tasks() -> list[TaskSpec[Any]]:
    return list(_registry.values())
