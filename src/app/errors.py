"""The error tree of Conveyor. The API maps these to HTTP answers in one handler."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


class ConveyorError(Exception):
    """Base class for every error Conveyor raises on purpose."""


class TaskError(ConveyorError):
    """Base class for errors a task raises to steer what happens to its job."""


class TransientError(TaskError):
    """Raised by a task when a later attempt may succeed: the job is retried with backoff."""


class PermanentError(TaskError):
    """Raised by a task when no retry can help: the job goes dead at once."""


class LeaseLost(ConveyorError):
    """Raised when a worker's write is refused because another attempt now owns the job."""


class Cancelled(BaseException):
    """Raised in a running task when its job's cancellation was asked: by
    `job.raise_if_cancelled()` and `job.progress()`, or asynchronously in the task's thread once
    CANCEL_GRACE_SECONDS have passed. A BaseException, as KeyboardInterrupt is, so that a task's
    `except Exception` does not swallow it; a task may catch it to clean up, then re-raise."""

    def __init__(self, message: str = "the job's cancellation was asked") -> None:
        super().__init__(message)


class UnknownTask(ConveyorError):
    """Raised when a request names a task that is not registered as public."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown task {name!r}; known tasks: {', '.join(sorted(known))}")
        self.name = name


class JobNotFound(ConveyorError):
    """Raised when no job has the requested id."""

    def __init__(self, job_id: object) -> None:
        super().__init__(f"job {job_id} not found")


class QueueNotFound(ConveyorError):
    """Raised when a queue name is not one of the queues Conveyor declares."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"queue {queue!r} not found")
        self.queue = queue


class InvalidTransition(ConveyorError):
    """Raised when a job's state does not allow the requested operation (replay, cancel)."""

    def __init__(self, job_id: object, state: str, operation: str, allowed: str) -> None:
        super().__init__(f"cannot {operation} job {job_id}: it is {state}; only {allowed} jobs can be")
        self.state = state


class LedgerUnavailable(ConveyorError):
    """Raised when the ledger cannot store an accepted job; the request is refused with 503."""


class IdempotencyConflict(ConveyorError):
    """Raised when an Idempotency-Key is reused with a different request body."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used with a different request; "
            "use a new key for a new request"
        )


class PublishFailed(ConveyorError):
    """Raised when RabbitMQ did not take every message of a batch; none of it counts as published."""


class QueueTypeMismatch(ConveyorError):
    """Raised when RabbitMQ refuses to declare a queue because it exists with another type."""

    def __init__(
        self, queue: str, wanted: str, reply: str, has: str | None = None, others: Sequence[str] = ()
    ) -> None:
        self.queue = queue
        self.wanted = wanted
        self.reply = reply
        self.has = has or type_in_reply(reply, wanted)
        self.others = list(others)
        named = ", ".join(repr(name) for name in [queue, *self.others])
        what = (
            f"queues {named} are {self.has} queues" if self.others else f"queue {named} is a {self.has} queue"
        )
        super().__init__(
            f"{what}, but BROKER_QUEUE_TYPE={wanted} asks for "
            f"{wanted} queues: RabbitMQ refused to declare it ({reply}). A queue's type cannot change "
            f"in place: stop the workers and run `conveyor queues migrate` with "
            f"BROKER_QUEUE_TYPE={wanted} (it declares the queues again as {wanted}; the ledger "
            f"publishes their jobs again), or point BROKER_URL at a new vhost "
            f"(rabbitmqctl add_vhost …), or set BROKER_QUEUE_TYPE back to {self.has}."
        )


def type_in_reply(reply: str, wanted: str) -> str:
    """The type a queue has, from RabbitMQ's refusal to declare it as `wanted`: the value its
    `x-queue-type` holds when the refusal names it, else the other of classic and quorum (a
    classic queue carries `x-max-priority`, which quorum queues refuse)."""
    found = re.search(r"'x-queue-type'.*current is the value '([^']+)'", reply)
    if found:
        return found.group(1)
    return "quorum" if wanted == "classic" else "classic"


class UnstorableInput(ConveyorError):
    """Raised when input holds a value the ledger cannot store (a NUL character in a string, an
    integer past 64 bits)."""

    def __init__(
        self,
        loc: tuple[str | int, ...],
        reason: str = "must not contain a NUL character (\\u0000), which PostgreSQL cannot store",
    ) -> None:
        super().__init__(reason)
        self.loc = loc


class JobRefused(ConveyorError):
    """Raised when the database refused to store a job for what it holds (not for being away)."""


class Unauthenticated(ConveyorError):
    """Raised when a request carries no key, or one that is unknown, revoked or malformed (401)."""


class Forbidden(ConveyorError):
    """Raised when a key lacks the scope a route needs (403)."""


class RateLimited(ConveyorError):
    """Raised when a client has used up its request rate, or an address its refusals (requests
    without a valid key, failed sign-ins); `retry_after` says when to come back (429)."""

    def __init__(self, retry_after: int, what: str = "rate limit exceeded for this key") -> None:
        super().__init__(f"{what}; retry in {retry_after} s")
        self.retry_after = retry_after


class KeyNameTaken(ConveyorError):
    """Raised when a new API key is given the name of a key that exists (revoked or not)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a key named {name!r} exists already; choose another name")


class KeyNotFound(ConveyorError):
    """Raised when no live API key has the given name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no live key named {name!r}")


class SignInRequired(ConveyorError):
    """Raised when a dashboard page is asked for without a valid session: the answer is the sign-in page."""


class UseEnqueue(ConveyorError):
    """Raised when a job is sent as a bare Dramatiq message (`actor.send()`): it would bypass the
    ledger, and a message without a ledger row is never run."""

    def __init__(self, task: str) -> None:
        short = task.rsplit(".", 1)[-1]
        super().__init__(
            f"{task}: a job is made with `await {short}.enqueue(payload, session=...)` "
            f"(or `{short}.enqueue_sync(...)`), which writes it to the ledger; a Dramatiq message "
            "sent by itself has no ledger row and would never run"
        )


class InvalidSchedule(ConveyorError, ValueError):
    """Raised when a schedule's timing is not valid: a bad cron expression, an interval below one
    second, both or neither of them, a time zone that is not an IANA name, or ticks closer
    together than MIN_SCHEDULE_INTERVAL_SECONDS; `field` names the field at fault, when one is."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ScheduleNameTaken(ConveyorError):
    """Raised when a new schedule is given the name of one that exists."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a schedule named {name!r} exists already; delete it first or choose another name")
        self.name = name


class TooManySchedules(ConveyorError):
    """Raised when a new schedule would make more than MAX_SCHEDULES."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"{limit} schedules exist already, as many as MAX_SCHEDULES allows; delete one first"
        )
        self.limit = limit


class ScheduleNotFound(ConveyorError):
    """Raised when no schedule has the requested name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"schedule {name!r} not found")
        self.name = name


class AlreadyInFlight(ConveyorError):
    """Raised when a job is refused because another job of its task holds its unique key while
    queued, retrying or running (one running export per client); `job_id` names that job."""

    def __init__(self, task: str, job_id: object) -> None:
        short = task.rsplit(".", 1)[-1]
        super().__init__(
            f"a {short} job of this client is already queued or running (job {job_id}); "
            "wait for it to finish, then ask again"
        )
        self.task = task
        self.job_id = job_id


class WebhookNotFound(ConveyorError):
    """Raised when no webhook subscription (or no delivery of it) has the requested id."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")


class WebhookTargetRefused(ConveyorError, ValueError):
    """Raised when a webhook URL may not be called: not https in production, or a host that
    resolves to a loopback, private, link-local, unspecified or multicast address while
    WEBHOOK_ALLOW_PRIVATE is off; also at delivery time, when the host resolves there now."""


class DeliveryNotReplayable(ConveyorError):
    """Raised when a replay names a delivery that is still pending (only dead or delivered ones)."""

    def __init__(self, delivery_id: int) -> None:
        super().__init__(
            f"delivery {delivery_id} is pending; only dead or delivered deliveries can be replayed"
        )


class InvalidCursor(ConveyorError, ValueError):
    """Raised when an event cursor (`Last-Event-ID`, `after=`) is not one the stream gave out."""

    def __init__(self, cursor: str) -> None:
        super().__init__(f"event cursor {cursor[:64]!r} is not of the form '<xid>-<id>' the stream gives")


class CursorExpired(ConveyorError):
    """Raised when an event cursor names an event older than EVENT_RETENTION_SECONDS keeps."""

    def __init__(self, cursor: str) -> None:
        super().__init__(
            f"event {cursor} is no longer kept (older than EVENT_RETENTION_SECONDS); "
            "start again without Last-Event-ID and read the jobs' state"
        )


class InvalidWorkflow(ConveyorError, ValueError):
    """Raised when a workflow cannot be stored: an unknown task, an invalid payload, an unknown
    step in `after`, a cycle, too many steps. `errors` names each problem by its place
    (`("steps", "d", "after", 0)`); nothing was stored."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{e['loc']}: {e['msg']}" for e in errors))
        self.errors = errors


class WorkflowNotFound(ConveyorError):
    """Raised when no workflow (that the client may see) has the requested id."""

    def __init__(self, workflow_id: object) -> None:
        super().__init__(f"workflow {workflow_id} not found")


class WorkflowEnded(ConveyorError):
    """Raised when a workflow to cancel has no step left that has not finished."""

    def __init__(self, workflow_id: object, state: str) -> None:
        super().__init__(f"cannot cancel workflow {workflow_id}: it is {state}; every step has finished")
        self.state = state
