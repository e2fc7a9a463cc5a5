"""What the API answers about a job, as typed fields, and the events of the event stream."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Generic, TypeVar

# A job in one of these states changes no more (unless an operator replays a dead one).
TERMINAL_STATES = frozenset({"succeeded", "dead", "cancelled"})
TIMES = frozenset(
    {
        "created_at",
        "updated_at",
        "available_at",
        "started_at",
        "finished_at",
        "next_retry_at",
        "scheduled_for",
        "cancel_requested_at",
    }
)


@dataclass(kw_only=True, eq=False)
class JobFields:
    """The job view of `GET /api/v1/jobs/{id}`. A job just enqueued knows only `id`, `task`,
    `state` and `duplicate` until it is refreshed; `raw` is the last answer as sent."""

    id: str
    task: str
    state: str
    duplicate: bool = False  # no job was made: this is the one the idempotency or unique key named
    # The enqueue's answer repeats the first answer to its Idempotency-Key (`Idempotent-Replayed:
    # true`; then `duplicate` too); False on a job read, and on a duplicate of a unique key.
    replayed: bool = False
    queue: str | None = None
    priority: int | None = None
    run: int | None = None
    attempts: int | None = None
    max_attempts: int | None = None
    progress: int | None = None
    payload: dict[str, Any] | None = None
    result: Any = None
    last_error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    available_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_retry_at: datetime | None = None
    worker_id: str | None = None
    client_id: str | None = None
    parent_id: str | None = None
    schedule: str | None = None
    scheduled_for: datetime | None = None
    cancel_requested_at: datetime | None = None
    unique_key: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        """Whether the job is succeeded, dead or cancelled."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    def _update(self, view: Mapping[str, Any]) -> None:
        for name, value in parse_view(view).items():
            setattr(self, name, value)
        self.raw = dict(view)


# What a job view may set; `replayed` is said by an enqueue's answer headers, not by a view.
NAMES = frozenset(f.name for f in fields(JobFields)) - {"raw", "replayed"}


def parse_view(view: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a job view (or an enqueue's answer) gives, typed; unknown keys stay in `raw`."""
    parsed: dict[str, Any] = {}
    for name, value in view.items():
        if name not in NAMES:
            continue
        if name in TIMES and isinstance(value, str):
            value = datetime.fromisoformat(value)
        parsed[name] = value
    parsed["id"] = str(view["id"])
    return parsed


J = TypeVar("J", bound=JobFields)


@dataclass(frozen=True)
class Event(Generic[J]):
    """One change of a job on the event stream: `id` is the cursor to resume after, `type` the
    job's new state, `job` the job as it was then."""

    id: str
    type: str
    job: J
    data: dict[str, Any] = field(repr=False)

    @property
    def state(self) -> str:
        return self.type
