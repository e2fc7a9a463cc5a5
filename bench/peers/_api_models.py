"""The request and response of `POST /api/v1/jobs`, shaped like Conveyor's, for the peer APIs."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    delay_seconds: int = Field(default=0, ge=0)
    priority: int = Field(default=0, ge=0, le=9)


class JobAccepted(BaseModel):
    id: UUID
    task: str
    state: str
    status_url: str
