"""Workflows: steps (jobs) that wait for other steps, declared whole and stored by one statement.

    flow = (
        Workflow("nightly")
        .step("a", extract, {"source": "s3"})
        .step("b", transform, {}, after=["a"])
        .step("c", report, {}, after=["a"])
        .step("d", gather, {}, after=["b", "c"])
    )
    accepted = await flow.enqueue(session=session)   # or flow.enqueue_sync(session=...)

The whole workflow is checked before anything is written: every task and payload, every name in
`after`, no cycle, at most MAX_WORKFLOW_STEPS steps; `InvalidWorkflow` names each problem by
its place (`("steps", "d", "after", 0)`). It is written in the caller's transaction, as
`task.enqueue` writes a job: it exists if and only if that transaction commits.

An idempotency key works as a keyed job's does, and is kept the same way: the first step (the
anchor) holds it with the fingerprint of the whole workflow. The same key with the same workflow
answers the first workflow (`replayed`); with another one (or a job) it is IdempotencyConflict.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

import orjson
from pydantic import ValidationError

from app.errors import IdempotencyConflict, InvalidWorkflow, LedgerUnavailable, UnknownTask, UnstorableInput
from app.jobs import enqueue as enqueuing
from app.jobs.registry import TaskSpec, get_task, public_tasks
from app.jobs.validation import NUL
from app.ledger import jobs as jobs_ledger
from app.ledger import workflows as ledger
from app.ledger.connections import AsyncConnection, SyncConnection
from app.ledger.jobs import KeyHolder, NewJob
from app.ledger.schema import JobState
from app.ledger.workflows import KeyedWorkflow, NewStep, NewWorkflow
from app.settings import get_settings

MAX_NAME_LENGTH = 200
Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class StepRequest:
    """One step as declared: its task (a task object, or a name: then it must be public), its
    payload, the steps it comes after, its priority."""

    task: TaskSpec[Any] | str
    payload: Any
    after: Sequence[str] = ()
    priority: int = 0


@dataclass(frozen=True, slots=True)
class AcceptedWorkflow:
    """A workflow as enqueued: its id, name, state, and each step's job id. `replayed`: its
    idempotency key made it before, and this is that first workflow, in its state now."""

    id: UUID
    name: str
    state: str
    steps: dict[str, UUID]
    replayed: bool = False


@dataclass
class Workflow:
    """A workflow being declared: `.step(...)` for each step, then `enqueue` (or `enqueue_sync`)."""

    name: str
    steps: dict[str, StepRequest] = field(default_factory=dict)

    def step(
        self,
        name: str,
        task: TaskSpec[Any] | str,
        payload: Any,
        *,
        after: Sequence[str] = (),
        priority: int = 0,
    ) -> Workflow:
        if name in self.steps:
            raise InvalidWorkflow([_problem(("steps", name), "a step of this name is declared already")])
        self.steps[name] = StepRequest(task, payload, tuple(after), priority)
        return self

    async def enqueue(
        self, *, session: Any = None, client_id: str | None = None, idempotency_key: str | None = None
    ) -> AcceptedWorkflow:
        """Store the workflow in `session`'s transaction (an AsyncSession or AsyncConnection), or
        in one of its own. Raises InvalidWorkflow, storing nothing, when any part is invalid, and
        IdempotencyConflict when `idempotency_key` made another workflow (or a job)."""
        workflow = build(self.name, self.steps, client_id=client_id, idempotency_key=idempotency_key)
        if session is not None:
            return await store(await enqueuing.async_connection(session), workflow)
        async with enqueuing.own_async_transaction() as conn:
            return await store(conn, workflow)

    def enqueue_sync(
        self, *, session: Any = None, client_id: str | None = None, idempotency_key: str | None = None
    ) -> AcceptedWorkflow:
        """`enqueue` for sync code: `session` is a SQLAlchemy Session or Connection."""
        workflow = build(self.name, self.steps, client_id=client_id, idempotency_key=idempotency_key)
        if session is not None:
            return store_sync(enqueuing.sync_connection(session), workflow)
        with enqueuing.own_transaction() as conn:
            return store_sync(conn, workflow)


async def store(conn: AsyncConnection, workflow: NewWorkflow) -> AcceptedWorkflow:
    """Insert the workflow in the caller's transaction; with an idempotency key already taken,
    the first workflow (the same request) or IdempotencyConflict (another), as `enqueue.store`
    does for a job: a key past its window is released, and the workflow inserted anew."""
    key, ttl = workflow.idempotency_key, get_settings().idempotency_key_ttl_seconds
    for _ in range(enqueuing.STORE_ATTEMPTS):
        if await ledger.insert_async(conn, workflow) or key is None:
            return accepted(workflow)
        first = await jobs_ledger.key_holder_async(conn, key, workflow.client_id, ttl)
        if first is not None and first.expired:
            await jobs_ledger.release_key_async(conn, key, workflow.client_id, ttl)
        elif first is not None:
            return _replayed(workflow, first, await ledger.workflow_of_key_async(conn, first.id))
        # The first request's transaction rolled back: its key is free again.
    raise _contended(key)


def store_sync(conn: SyncConnection, workflow: NewWorkflow) -> AcceptedWorkflow:
    """`store`, for a sync connection."""
    key, ttl = workflow.idempotency_key, get_settings().idempotency_key_ttl_seconds
    for _ in range(enqueuing.STORE_ATTEMPTS):
        if ledger.insert(conn, workflow) or key is None:
            return accepted(workflow)
        first = jobs_ledger.key_holder(conn, key, workflow.client_id, ttl)
        if first is not None and first.expired:
            jobs_ledger.release_key(conn, key, workflow.client_id, ttl)
        elif first is not None:
            return _replayed(workflow, first, ledger.workflow_of_key(conn, first.id))
    raise _contended(key)


def _replayed(workflow: NewWorkflow, first: KeyHolder, kept: KeyedWorkflow | None) -> AcceptedWorkflow:
    if kept is None or first.request_hash != workflow.request_hash:
        raise IdempotencyConflict(workflow.idempotency_key or "")
    return AcceptedWorkflow(kept.id, kept.name, kept.state, kept.steps, replayed=True)


def _contended(key: str | None) -> LedgerUnavailable:
    return LedgerUnavailable(f"Idempotency-Key {key!r} is contended; retry later")


def fingerprint(name: str, steps: Sequence[NewStep]) -> str:
    """What a keyed workflow asked for: its name and every step's task, payload, `after` and
    priority (the order of the steps aside)."""
    asked = {
        s.step: [s.job.task, orjson.loads(s.job.payload_json), list(s.after), s.job.priority] for s in steps
    }
    canonical = orjson.dumps(["workflow", name, asked], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def accepted(workflow: NewWorkflow) -> AcceptedWorkflow:
    return AcceptedWorkflow(workflow.id, workflow.name, "running", {s.step: s.job.id for s in workflow.steps})


def _problem(loc: Loc, msg: str, kind: str = "value_error") -> dict[str, object]:
    return {"loc": loc, "msg": msg, "type": kind}


def _check_name(value: str, loc: Loc, what: str) -> list[dict[str, object]]:
    if not 1 <= len(value) <= MAX_NAME_LENGTH:
        return [_problem(loc, f"{what} must be 1 to {MAX_NAME_LENGTH} characters")]
    if NUL in value:
        return [_problem(loc, f"{what} must not contain a NUL character (\\u0000)", "string_unstorable")]
    return []


def _job(
    name: str, request: StepRequest, client_id: str | None
) -> tuple[NewJob | None, list[dict[str, object]]]:
    """The step's job, or the problems with its task and payload."""
    at: Loc = ("steps", name)
    spec = request.task if isinstance(request.task, TaskSpec) else get_task(request.task)
    if spec is None or (isinstance(request.task, str) and not spec.public):
        known = [s.name for s in public_tasks()]
        return None, [_problem((*at, "task"), str(UnknownTask(str(request.task), known)), "unknown_task")]
    try:
        job = enqueuing.new_job(spec, request.payload, priority=request.priority, client_id=client_id)
    except ValidationError as error:
        return None, [
            _problem((*at, "payload", *e.get("loc", ())), e.get("msg", ""), e.get("type", ""))
            for e in error.errors()
        ]
    except UnstorableInput as error:
        return None, [_problem((*at, "payload", *error.loc), str(error), "string_unstorable")]
    # A step is no unique job: its place in its workflow is what makes it one of a kind.
    return replace(job, unique_key=None), []


def _after_problems(steps: Mapping[str, StepRequest]) -> list[dict[str, object]]:
    problems = []
    for name, request in steps.items():
        for index, upstream in enumerate(request.after):
            loc: Loc = ("steps", name, "after", index)
            if upstream not in steps:
                problems.append(_problem(loc, f"unknown step {upstream!r}", "unknown_step"))
            elif upstream == name:
                problems.append(_problem(loc, "a step cannot come after itself", "cycle"))
            elif upstream in request.after[:index]:
                problems.append(_problem(loc, f"step {upstream!r} is named twice", "value_error"))
    return problems


def _cycle(steps: Mapping[str, StepRequest]) -> dict[str, object] | None:
    """The first `after` entry that closes a cycle (depth first, in declaration order), if any."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> dict[str, object] | None:
        path.append(name)
        for index, upstream in enumerate(steps[name].after):
            if upstream in path:
                ring = " after ".join([*path[path.index(upstream) :], upstream])
                return _problem(("steps", name, "after", index), f"cycle: {ring}", "cycle")
            if upstream not in done and (found := visit(upstream)) is not None:
                return found
        path.pop()
        done.add(name)
        return None

    for name in steps:
        if name not in done and (found := visit(name)) is not None:
            return found
    return None


def build(
    name: str,
    steps: Mapping[str, StepRequest],
    *,
    client_id: str | None = None,
    idempotency_key: str | None = None,
) -> NewWorkflow:
    """The workflow to insert; raises InvalidWorkflow naming every problem found."""
    limit = get_settings().max_workflow_steps
    problems = _check_name(name, ("name",), "a workflow's name")
    if not steps:
        problems.append(_problem(("steps",), "a workflow has at least one step"))
    if len(steps) > limit:
        msg = f"at most {limit} steps in one workflow (MAX_WORKFLOW_STEPS), got {len(steps)}"
        raise InvalidWorkflow([_problem(("steps",), msg, "too_long")])
    jobs: dict[str, NewJob] = {}
    for step, request in steps.items():
        problems += _check_name(step, ("steps", step), "a step's name")
        job, found = _job(step, request, client_id)
        problems += found
        if job is not None:
            jobs[step] = job
    after = _after_problems(steps)
    problems += after
    if not after and (cycle := _cycle(steps)) is not None:
        problems.append(cycle)
    if problems:
        raise InvalidWorkflow(problems)
    downstream: dict[str, list[UUID]] = {step: [] for step in steps}
    for step, request in steps.items():
        for upstream in request.after:
            downstream[upstream].append(jobs[step].id)
    new_steps = [
        NewStep(jobs[step], step, tuple(request.after), tuple(downstream[step]))
        for step, request in steps.items()
    ]
    request_hash = None if idempotency_key is None else fingerprint(name, new_steps)
    return NewWorkflow(uuid.uuid4(), name, client_id, new_steps, idempotency_key, request_hash)


def initial_state(step: NewStep) -> str:
    return JobState.WAITING if step.after else JobState.QUEUED
