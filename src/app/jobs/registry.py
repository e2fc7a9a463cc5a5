"""The registry of tasks: a name, a payload model, a queue and a retry policy each.

`@task` only records the spec. Nothing here knows a broker: `app.worker` binds every
registered task to the worker's broker as a Dramatiq actor, and the API, the relay and the
CLI read the same specs without ever building one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from app.errors import UseEnqueue
from app.jobs import batches
from app.jobs import enqueue as enqueuing
from app.jobs.backoff import backoff_seconds
from app.jobs.context import JobContext
from app.jobs.enqueue import Accepted
from app.jobs.flow import NO_LIMITS, Limits, declare
from app.jobs.schedules import Timing, declared
from app.settings import get_settings
from app.tracing import enqueuing as traced

# RabbitMQ declares a priority queue with its highest priority up front; the API takes 0-9.
MAX_PRIORITY = 9


class Queue(StrEnum):
    DEFAULT = "default"
    EMAIL = "email"
    EXPORTS = "exports"


class Payload(BaseModel):
    """Base of every task's payload: undeclared fields are refused, and types are strict
    (validated as JSON: `true` is not an integer, `"5"` is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True)


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

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait before the attempt after `attempt` (1-based)."""
        return backoff_seconds(attempt, self.resolved_base(), self.resolved_max())


@dataclass(frozen=True)
class TaskSpec(Generic[P]):
    """A registered task: what `@task` returns, and what your code enqueues jobs of.

    `await send_email.enqueue(payload, session=session)` writes the job in the caller's
    transaction (it exists if and only if that transaction commits); `enqueue_sync` does the
    same for sync code. Inside a running task, the new job is that job's child.
    `enqueue_many` (and `enqueue_many_sync`) make many jobs with one INSERT, all or none.
    The option `unique_key=` of one enqueue (or the task's `unique_key` field, for every enqueue)
    makes the job unique while in flight: the result is the job holding that key, `duplicate`
    set, when there is one.
    """

    name: str
    payload_model: type[P]
    fn: TaskFn[P]
    queue: str
    retry: RetryPolicy
    time_limit_seconds: float | None
    public: bool
    description: str
    # Declared in code: the relay keeps a schedule of the task's own name with this timing and
    # the payload model's defaults.
    schedule: Timing | None = None
    # At most one queued, retrying or running job per client (the key that enqueued it); a
    # second is refused with AlreadyInFlight. Operators' jobs (no client) are not counted.
    one_per_client: bool = False
    # The payload field whose value is the job's unique key: while a job of the task with that
    # value is queued, retrying or running, enqueuing another returns that job as a duplicate.
    unique_key: str | None = None
    # Concurrency and rate per key (app.jobs.flow), enforced where the ledger claims jobs.
    limits: Limits = NO_LIMITS

    def max_attempts(self) -> int:
        return self.retry.resolved_max_attempts()

    async def enqueue(
        self,
        payload: P | dict[str, Any],
        *,
        session: Any = None,
        delay_seconds: float = 0.0,
        priority: int = 0,
        idempotency_key: str | None = None,
        client_id: str | None = None,
        unique_key: str | None = None,
    ) -> Accepted:
        """Enqueue a job of this task in `session`'s transaction (an AsyncSession or
        AsyncConnection of SQLAlchemy, or a psycopg AsyncConnection), or in a transaction of
        its own. Raises pydantic's ValidationError for a payload that does not fit.

        With `unique_key` (or the task's own), while a job of this task with that key is
        queued, retrying or running, no job is made: the result is that job, `duplicate` set."""
        with traced(self.name):
            job = enqueuing.new_job(
                self,
                payload,
                delay_seconds=delay_seconds,
                priority=priority,
                idempotency_key=idempotency_key,
                client_id=client_id,
                unique_key=unique_key,
            )
            if session is not None:
                return await enqueuing.store(await enqueuing.async_connection(session), job)
            async with enqueuing.own_async_transaction() as conn:
                return await enqueuing.store(conn, job)

    def enqueue_sync(
        self,
        payload: P | dict[str, Any],
        *,
        session: Any = None,
        delay_seconds: float = 0.0,
        priority: int = 0,
        idempotency_key: str | None = None,
        client_id: str | None = None,
        unique_key: str | None = None,
    ) -> Accepted:
        """`enqueue` for sync code: `session` is a SQLAlchemy Session or Connection (a task's
        `job.transaction()` is one), or a psycopg connection."""
        with traced(self.name):
            job = enqueuing.new_job(
                self,
                payload,
                delay_seconds=delay_seconds,
                priority=priority,
                idempotency_key=idempotency_key,
                client_id=client_id,
                unique_key=unique_key,
            )
            if session is not None:
                return enqueuing.store_sync(enqueuing.sync_connection(session), job)
            with enqueuing.own_transaction() as conn:
                return enqueuing.store_sync(conn, job)

    async def enqueue_many(
        self,
        payloads: Iterable[P | dict[str, Any]],
        *,
        session: Any = None,
        delay_seconds: float = 0.0,
        priority: int = 0,
        idempotency_key: str | None = None,
        client_id: str | None = None,
    ) -> list[Accepted]:
        """Enqueue a job per payload with ONE INSERT, in `session`'s transaction (as `enqueue`)
        or in one of its own; returns the jobs in the payloads' order. The options apply to
        every job.

        All or nothing: an invalid payload raises pydantic's ValidationError (each error's
        `loc` starts with the payload's index) before anything is written. `idempotency_key`
        covers the whole batch, as the HTTP batch's header does: the same key with the same
        payloads and options returns the first batch's jobs (`duplicate` set, nothing new
        stored), with others raises IdempotencyConflict. A keyed batch is two statements, so
        give it a session in a transaction (not a psycopg connection in autocommit mode).

        A task with a `unique_key` field gives each job its key: a job whose key an in-flight
        job holds (or an earlier job of the same batch) is not made, and its place in the
        result is that job, `duplicate` set; the rest are stored.
        """
        with traced(self.name):
            jobs = batches.new_jobs(
                self, payloads, delay_seconds=delay_seconds, priority=priority, client_id=client_id
            )
            if session is not None:
                conn = await enqueuing.async_connection(session)
                return await batches.store_many(conn, jobs, idempotency_key=idempotency_key)
            async with enqueuing.own_async_transaction() as conn:
                return await batches.store_many(conn, jobs, idempotency_key=idempotency_key)

    def enqueue_many_sync(
        self,
        payloads: Iterable[P | dict[str, Any]],
        *,
        session: Any = None,
        delay_seconds: float = 0.0,
        priority: int = 0,
        idempotency_key: str | None = None,
        client_id: str | None = None,
    ) -> list[Accepted]:
        """`enqueue_many` for sync code: `session` is a SQLAlchemy Session or Connection (a
        task's `job.transaction()` is one), or a psycopg connection."""
        with traced(self.name):
            jobs = batches.new_jobs(
                self, payloads, delay_seconds=delay_seconds, priority=priority, client_id=client_id
            )
            if session is not None:
                conn = enqueuing.sync_connection(session)
                return batches.store_many_sync(conn, jobs, idempotency_key=idempotency_key)
            with enqueuing.own_transaction() as conn:
                return batches.store_many_sync(conn, jobs, idempotency_key=idempotency_key)

    def send(self, *args: Any, **kwargs: Any) -> None:
        """Not how a job is made: see `enqueue`."""
        raise UseEnqueue(self.name)

    def delay(self, *args: Any, **kwargs: Any) -> None:
        """Not how a job is made: see `enqueue`."""
        raise UseEnqueue(self.name)


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
    schedule: Timing | str | None = None,
    one_per_client: bool = False,
    unique_key: str | None = None,
    concurrency: int | None = None,
    concurrency_key: str | None = None,
    rate: str | None = None,
    rate_key: str | None = None,
) -> Callable[[TaskFn[P]], TaskSpec[P]]:
    """Register a function as a task named `<module>.<function>`.

    `schedule` (`Every(seconds=60)`, `Cron("0 3 * * *", timezone="Europe/Paris")` or a cron
    string in UTC) makes the relay fire the task on that timing, with the payload model's
    defaults, which must then validate from `{}`. `one_per_client` lets each client (API key)
    have one job of the task queued, retrying or running at a time (a second is refused).
    `unique_key="field"` makes the value of that payload field a key that one job of the task
    at a time holds while queued, retrying or running: enqueuing another returns that job.

    `concurrency=N` runs at most N jobs of the task at once, per value of the payload field
    `concurrency_key` when given; `rate="10/second"` (or `/minute`, `/hour`) starts at most that
    many per window, per value of `rate_key` when given. Jobs over a limit wait `queued`.
    """
    if unique_key is not None and unique_key not in payload.model_fields:
        raise ValueError(f"unique_key {unique_key!r} is not a field of {payload.__name__}")
    if unique_key is not None and one_per_client:
        raise ValueError("a task is either one_per_client or unique_key: both use the unique index")
    limits = declare(payload, concurrency, concurrency_key, rate, rate_key)
    timing = None if schedule is None else declared(schedule)
    if timing is not None:
        payload.model_validate({})  # fails at import, not at the first tick

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
            schedule=timing,
            one_per_client=one_per_client,
            unique_key=unique_key,
            limits=limits,
        )
        _registry[name] = spec
        return spec

    return register


def get_task(name: str) -> TaskSpec[Any] | None:
    return _registry.get(name)


def public_tasks() -> list[TaskSpec[Any]]:
    return [spec for spec in _registry.values() if spec.public]


def all_tasks() -> list[TaskSpec[Any]]:
    return list(_registry.values())


def scheduled_tasks() -> list[TaskSpec[Any]]:
    """The tasks that declare a schedule in code."""
    return [spec for spec in _registry.values() if spec.schedule is not None]


def limited_tasks() -> frozenset[str]:
    """The names of the tasks with a concurrency or rate limit: their claims count."""
    return frozenset(name for name, spec in _registry.items() if spec.limits.any)


def retry_delay(task_name: str, attempt: int) -> float:
    """The backoff before the next attempt of a job of `task_name` (the defaults for a task this
    version no longer has)."""
    spec = _registry.get(task_name)
    return (spec.retry if spec is not None else RetryPolicy()).delay_after(attempt)
