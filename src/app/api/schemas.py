"""Request and response bodies of the HTTP contract (v1)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.enqueue import MAX_DELAY_SECONDS
from app.jobs.registry import MAX_PRIORITY
from app.operate.views import JobView


class JobRequest(BaseModel):
    """Strict JSON types: `true` is not an integer and `"5"` is not a number."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task: str = Field(min_length=1, max_length=200, examples=["app.tasks.example.echo"])
    payload: dict[str, Any] = Field(default_factory=dict, examples=[{"message": "hello"}])
    delay_seconds: int = Field(default=0, ge=0, le=MAX_DELAY_SECONDS)
    priority: int = Field(default=0, ge=0, le=MAX_PRIORITY, description="0 (default) to 9 (first)")


class JobAccepted(BaseModel):
    id: UUID
    task: str
    state: str
    status_url: str


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
