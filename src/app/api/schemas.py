"""Request and response bodies of the HTTP contract (v1)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

# A year: longer delays are almost certainly a unit mistake (ms for s).
MAX_DELAY_SECONDS = 365 * 24 * 3600


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=200, examples=["app.tasks.example.echo"])
    payload: dict[str, Any] = Field(default_factory=dict, examples=[{"message": "hello"}])
    delay_seconds: int = Field(default=0, ge=0, le=MAX_DELAY_SECONDS)
    priority: int = Field(default=0, ge=0, le=9, description="0 (default) to 9 (first)")


class EmailRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(examples=["someone@example.com"])
    subject: str
    body: str


class JobAccepted(BaseModel):
    id: UUID
    task: str
    state: str
    status_url: str


class JobView(BaseModel):
    id: UUID
    task: str
    queue: str
    state: str
    priority: int
    run: int
    attempts: int
    max_attempts: int
    progress: int
    payload: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    available_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    next_retry_at: datetime | None
    last_error: str | None
    result: Any
    worker_id: str | None


class AttemptView(BaseModel):
    run: int
    attempt: int
    worker_id: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    error: str | None
    duration_seconds: float | None


class JobList(BaseModel):
    items: list[JobView]
    next_cursor: str | None


class RetryPolicyView(BaseModel):
    max_attempts: int
    backoff_base_seconds: float
    backoff_max_seconds: float


class TaskView(BaseModel):
    name: str
    description: str
    queue: str
    payload_schema: dict[str, Any]
    retry: RetryPolicyView
    time_limit_seconds: float | None


class ErrorBody(BaseModel):
    detail: Any = Field(description="A message, or FastAPI's list of field errors")
