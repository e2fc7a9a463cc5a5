"""`/api/v1/workflows`: declare a workflow (steps that wait for other steps), read one, list them.

A workflow is checked whole before anything is stored: every task and payload, every name in
`after`, no cycle, at most MAX_WORKFLOW_STEPS steps. Each problem is a 422 whose `loc` names
it (`["body", "steps", "d", "after", 0]`). Scopes as for jobs: `enqueue` makes workflows and
reads its own; `read` reads every one.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from app.access.keys import Client, Scope
from app.api.accept import KEY_ON_WORKFLOW, _documented_body, _idempotency_key, _parse
from app.api.audit import actor
from app.api.auth import authenticate
from app.api.deps import reading, transaction
from app.api.metrics import JOBS_ACCEPTED
from app.api.responses import AUTH, BODY, INVALID, UNAVAILABLE, Responses, responses
from app.api.schemas import ErrorBody
from app.errors import InvalidWorkflow
from app.jobs.registry import MAX_PRIORITY
from app.jobs.workflows import StepRequest, build, store
from app.operate import actions
from app.operate import workflows as reads
from app.operate.reads import decode_cursor
from app.operate.workflows import WorkflowList, WorkflowState, WorkflowView

router = APIRouter(prefix="/api/v1", tags=["workflows"])

READERS = (Scope.READ, Scope.ENQUEUE)
NO_WORKFLOW: Responses = {404: {"model": ErrorBody, "description": "No such workflow"}}
WORKFLOW_INVALID: Responses = {
    422: {
        "model": ErrorBody,
        "description": "An unknown task, an invalid payload, an unknown step in `after`, a cycle, "
        "or more than MAX_WORKFLOW_STEPS steps; `loc` names it. Nothing is stored. Also an "
        "Idempotency-Key its client used for another workflow (or a job)",
    }
}


class StepBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    task: str = Field(min_length=1, max_length=200, examples=["app.tasks.example.echo"])
    payload: dict[str, object] = Field(default_factory=dict, examples=[{"message": "hello"}])
    after: list[str] = Field(default_factory=list, description="The steps this one comes after")
    priority: int = Field(default=0, ge=0, le=MAX_PRIORITY)


class WorkflowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=200, examples=["nightly"])
    steps: dict[str, StepBody] = Field(min_length=1)


class WorkflowAccepted(BaseModel):
    id: UUID
    name: str
    state: str
    steps: dict[str, UUID]
    status_url: str


def _own(client: Client) -> str | None:
    return None if client.reads_everything else client.key_id


def _invalid(error: InvalidWorkflow) -> RequestValidationError:
    return RequestValidationError([{**problem, "loc": ("body", *problem["loc"])} for problem in error.errors])


@router.post(
    "/workflows",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WorkflowAccepted,
    responses=responses(BODY, WORKFLOW_INVALID, AUTH, UNAVAILABLE),
    summary="Declare a workflow: steps that run after the steps they name in `after`",
    operation_id="enqueue_workflow",
    openapi_extra=_documented_body(WorkflowRequest, KEY_ON_WORKFLOW),
)
async def enqueue_workflow(request: Request) -> Response:
    client = await authenticate(request, Scope.ENQUEUE)
    key = _idempotency_key(request)
    body = _parse(WorkflowRequest, await request.body())
    steps = {
        name: StepRequest(step.task, step.payload, tuple(step.after), step.priority)
        for name, step in body.steps.items()
    }
    try:
        workflow = build(body.name, steps, client_id=client.key_id, idempotency_key=key)
    except InvalidWorkflow as error:
        raise _invalid(error) from None
    async with transaction() as conn:
        answer = await store(conn, workflow)
    status_url = f"/api/v1/workflows/{answer.id}"
    headers = {"Location": status_url}
    if answer.replayed:
        headers["Idempotent-Replayed"] = "true"
    else:
        for step in workflow.steps:
            JOBS_ACCEPTED.labels(step.job.task).inc()
    view = WorkflowAccepted(
        id=answer.id, name=answer.name, state=answer.state, steps=answer.steps, status_url=status_url
    )
    return Response(view.model_dump_json(), status_code=202, headers=headers, media_type="application/json")


@router.get(
    "/workflows/{workflow_id}",
    response_model=WorkflowView,
    responses=responses(NO_WORKFLOW, INVALID, AUTH, UNAVAILABLE),
    operation_id="get_workflow",
)
async def get_workflow(workflow_id: UUID, request: Request) -> WorkflowView:
    client = await authenticate(request, *READERS)
    async with reading() as conn:
        return await reads.get(conn, workflow_id, _own(client))


@router.get(
    "/workflows",
    response_model=WorkflowList,
    responses=responses(INVALID, AUTH, UNAVAILABLE),
    operation_id="list_workflows",
)
async def list_workflows(
    request: Request,
    state: WorkflowState | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> WorkflowList:
    client = await authenticate(request, *READERS)
    cursor = cursor or None
    try:
        if cursor is not None:
            decode_cursor(cursor)
    except ValueError:
        raise RequestValidationError(
            [{"loc": ("query", "cursor"), "msg": "invalid cursor", "type": "value_error"}]
        ) from None
    async with reading() as conn:
        return await reads.page(
            conn, state=state.value if state else None, limit=limit, cursor=cursor, client_id=_own(client)
        )


@router.post(
    "/workflows/{workflow_id}/cancel",
    response_model=WorkflowView,
    summary="Cancel a workflow: its steps that have not started at once (200); running ones are "
    "asked to stop (202)",
    operation_id="cancel_workflow",
    responses=responses(
        NO_WORKFLOW,
        INVALID,
        AUTH,
        UNAVAILABLE,
        {
            202: {
                "model": WorkflowView,
                "description": "Steps are running: their workers are asked to stop them, and each "
                "ends cancelled (or succeeded, if it finished first)",
            },
            409: {"model": ErrorBody, "description": "Every step of the workflow has finished"},
        },
    ),
)
async def cancel_workflow(workflow_id: UUID, request: Request, response: Response) -> WorkflowView:
    """`operate` cancels any workflow; an `enqueue` key only the workflows it made."""
    client = await authenticate(request, Scope.OPERATE, Scope.ENQUEUE)
    own = None if client.may(Scope.OPERATE) else client.key_id
    async with transaction() as conn:
        done = await actions.cancel_workflow(conn, workflow_id, actor(request, client), client_id=own)
        view = await reads.get(conn, workflow_id)
    if done.requested:
        response.status_code = status.HTTP_202_ACCEPTED
    return view
