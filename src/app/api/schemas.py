"""Request and response bodies of the HTTP contract (v1)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    field_validator,
    model_validator,
)

from app.jobs.enqueue import MAX_DELAY_SECONDS, MAX_UNIQUE_KEY_LENGTH
from app.jobs.registry import MAX_PRIORITY
from app.jobs.schedules import MAX_EVERY_SECONDS, NAME_PATTERN, check_cron, check_timezone
from app.jobs.validation import storable_text
from app.operate.queues import QueueView
from app.operate.schedules import ScheduleView
from app.operate.views import AttemptView, JobView


class JobRequest(BaseModel):
    """Strict JSON types: `true` is not an integer and `"5"` is not a number."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task: str = Field(min_length=1, max_length=200, examples=["app.tasks.example.echo"])
    payload: dict[str, Any] = Field(default_factory=dict, examples=[{"message": "hello"}])
    delay_seconds: int = Field(default=0, ge=0, le=MAX_DELAY_SECONDS)
    priority: int = Field(default=0, ge=0, le=MAX_PRIORITY, description="0 (default) to 9 (first)")
    unique_key: Annotated[
        str | None,
        Field(
            default=None,
            min_length=1,
            max_length=MAX_UNIQUE_KEY_LENGTH,
            description="While a job of the task with this key is queued, retrying or running, "
            "the answer is that job (`duplicate`) and no job is made. Overrides the task's "
            "own `unique_key` field.",
            examples=["account-42"],
        ),
        AfterValidator(lambda value: value and storable_text(value)),
    ]


class JobAccepted(BaseModel):
    id: UUID
    task: str
    state: str
    status_url: str
    duplicate: bool = Field(
        default=False,
        description="No job was made: this is the job there already (the one this "
        "Idempotency-Key made, or the in-flight job holding the unique key). Sent only when true",
    )


class JobBatchRequest(BaseModel):
    """Jobs to enqueue together, all or none: 1 to MAX_BATCH_JOBS bodies of `POST /api/v1/jobs`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    jobs: list[JobRequest] = Field(min_length=1)


class JobBatchAccepted(BaseModel):
    jobs: list[JobAccepted] = Field(description="The jobs in the order of the request's")


class JobList(BaseModel):
    items: list[JobView]
    next_cursor: str | None


class RetryPolicyView(BaseModel):
    max_attempts: int
    backoff_base_seconds: float
    backoff_max_seconds: float


class LimitsView(BaseModel):
    """At most `concurrency` jobs running at once per value of payload field `concurrency_key`
    (null: for the whole task); at most `rate` starts (`"5/second"`) per value of `rate_key`."""

    concurrency: int | None
    concurrency_key: str | None
    rate: str | None
    rate_key: str | None


class TaskView(BaseModel):
    name: str
    description: str
    queue: str
    payload_schema: dict[str, Any]
    retry: RetryPolicyView
    time_limit_seconds: float | None
    unique_key: str | None = Field(
        default=None, description="The payload field whose value one in-flight job at a time holds"
    )
    limits: LimitsView


# Named lists: a bare `list[...]` answer gets a title made of the route's path in the schema.
class TaskList(RootModel[list[TaskView]]):
    """The public tasks."""


class AttemptList(RootModel[list[AttemptView]]):
    """A job's attempts, oldest first."""


class QueueList(RootModel[list[QueueView]]):
    """Each queue: paused or not, its depth, its running jobs."""


class ErrorBody(BaseModel):
    detail: Any = Field(description="A message, or FastAPI's list of field errors")


class InFlightBody(ErrorBody):
    """A job refused because one of its task is in flight for this client (one export at a time)."""

    job_id: UUID = Field(description="The job that is queued, retrying or running")
    status_url: str


class ScheduleRequest(BaseModel):
    """A task fired on a timing: exactly one of `cron` (5 fields, read in `timezone`) and
    `every_seconds` (ticks on the multiples of it since the Unix epoch)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=200, pattern=NAME_PATTERN, examples=["nightly-report"])
    task: str = Field(min_length=1, max_length=200, examples=["app.tasks.example.echo"])
    payload: dict[str, Any] = Field(default_factory=dict, examples=[{"message": "tick"}])
    cron: str | None = Field(default=None, min_length=9, max_length=200, examples=["*/5 * * * *"])
    every_seconds: int | None = Field(default=None, ge=1, le=MAX_EVERY_SECONDS)
    timezone: str = Field(default="UTC", min_length=1, max_length=64, examples=["Europe/Paris"])

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleRequest:
        if (self.cron is None) == (self.every_seconds is None):
            raise ValueError("give exactly one of cron and every_seconds")
        return self


class ScheduleList(BaseModel):
    items: list[ScheduleView]
    next_cursor: str | None


class Liveness(BaseModel):
    status: Literal["ok"]


class CheckView(BaseModel):
    """One dependency's check: `ok`, and for a key's holder its details and the reason it failed."""

    model_config = ConfigDict(extra="allow")

    ok: bool
    reason: str | None = Field(default=None, description="Why the check failed (with a key)")


class Readiness(BaseModel):
    status: Literal["ok", "fail"]
    checks: dict[str, CheckView] = Field(description="database, broker, worker, relay")
