"""What the API answers about a workflow, as typed fields; shared by both clients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# A workflow in one of these states changes no more (unless a dead step of a failed one is replayed).
WORKFLOW_TERMINAL_STATES = frozenset({"succeeded", "failed"})


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a workflow to enqueue: its task, payload, the steps it comes `after`, and its
    priority (None: the task's)."""

    task: str
    payload: Mapping[str, Any] | None = None
    after: Sequence[str] = ()
    priority: int | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"task": self.task, "payload": dict(self.payload or {})}
        if self.after:
            body["after"] = list(self.after)
        if self.priority is not None:
            body["priority"] = self.priority
        return body


@dataclass(frozen=True, slots=True)
class WorkflowStep:
    """A step as `GET /api/v1/workflows/{id}` shows it. A workflow just enqueued knows only each
    step's `job_id` until it is refreshed."""

    job_id: str
    task: str | None = None
    state: str | None = None
    after: tuple[str, ...] = ()
    depth: int | None = None
    last_error: str | None = None


@dataclass(kw_only=True, eq=False)
class WorkflowFields:
    """The workflow view of `GET /api/v1/workflows/{id}`: its state (`running`, then `succeeded`
    or `failed`), its steps by name, and how many steps are in each state (`counts`). A
    workflow just enqueued knows its `id`, `name`, `state` and each step's job id until it is
    refreshed; `raw` is the last answer as sent."""

    id: str
    name: str
    state: str
    steps: dict[str, WorkflowStep] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    created_at: datetime | None = None
    finished_at: datetime | None = None
    client_id: str | None = None
    # The enqueue's answer repeats the first answer to its Idempotency-Key (`Idempotent-Replayed:
    # true`: the same workflow and step ids, nothing new stored); False on a workflow read.
    replayed: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        """Whether every step is finished: the workflow is succeeded or failed."""
        return self.state in WORKFLOW_TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    @property
    def job_ids(self) -> dict[str, str]:
        """Each step's job id, by step name (for `client.get(…)` or `events(job=…)`)."""
        return {name: step.job_id for name, step in self.steps.items()}

    def _update(self, view: Mapping[str, Any]) -> None:
        for name, value in parse_workflow(view).items():
            setattr(self, name, value)
        self.raw = dict(view)


def parse_workflow(view: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a workflow view (or an enqueue's answer, whose steps are job ids) gives, typed."""
    steps: dict[str, WorkflowStep] = {}
    for name, step in dict(view.get("steps") or {}).items():
        if isinstance(step, Mapping):
            steps[name] = WorkflowStep(
                job_id=str(step["job_id"]),
                task=step.get("task"),
                state=step.get("state"),
                after=tuple(step.get("after") or ()),
                depth=step.get("depth"),
                last_error=step.get("last_error"),
            )
        else:
            steps[name] = WorkflowStep(job_id=str(step))
    parsed: dict[str, Any] = {
        "id": str(view["id"]),
        "name": view["name"],
        "state": view["state"],
        "steps": steps,
    }
    if "counts" in view:
        parsed["counts"] = dict(view["counts"] or {})
    for name in ("created_at", "finished_at"):
        if isinstance(value := view.get(name), str):
            parsed[name] = datetime.fromisoformat(value)
    if "client_id" in view:
        parsed["client_id"] = view["client_id"]
    return parsed
