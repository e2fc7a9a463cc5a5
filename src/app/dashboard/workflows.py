"""The dashboard's workflows: a list (by state, newest first) and one workflow drawn as its graph."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import AfterValidator
from sqlalchemy.ext.asyncio import AsyncConnection

from app.api.deps import reading
from app.dashboard.access import viewer
from app.dashboard.graphs import workflow_graph
from app.dashboard.rendering import query, render
from app.errors import WorkflowNotFound
from app.jobs.validation import storable_text
from app.operate import workflows as reads
from app.operate.reads import decode_cursor
from app.operate.workflows import WorkflowState

router = APIRouter(prefix="/dashboard", include_in_schema=False, dependencies=[Depends(viewer)])

PAGE_SIZE = 50
Text = Annotated[str, Query(max_length=200), AfterValidator(storable_text)]


async def list_context(conn: AsyncConnection, state: str, cursor: str) -> dict[str, Any]:
    try:
        chosen = WorkflowState(state) if state else None
        if cursor:
            decode_cursor(cursor)
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "invalid state or cursor") from None
    found = await reads.page(conn, state=chosen, limit=PAGE_SIZE, cursor=cursor or None)
    return {
        "list": found,
        "state": state,
        "states": [s.value for s in WorkflowState],
        "cursor": cursor,
        "this_query": query(state=state, cursor=cursor),
        "first_query": query(state=state),
        "next_query": query(state=state, cursor=found.next_cursor) if found.next_cursor else None,
    }


@router.get("/workflows")
async def workflows_page(request: Request, state: Text = "", cursor: Text = "") -> Response:
    async with reading() as conn:
        context = await list_context(conn, state, cursor)
    return render(request, "workflows.html", {"nav": "workflows", **context})


@router.get("/fragments/workflows")
async def workflows_fragment(request: Request, state: Text = "", cursor: Text = "") -> Response:
    async with reading() as conn:
        context = await list_context(conn, state, cursor)
    return render(request, "_workflows.html", context, page=False)


async def _one(request: Request, workflow_id: UUID, template: str, *, page: bool) -> Response:
    try:
        async with reading() as conn:
            workflow = await reads.get(conn, workflow_id)
    except WorkflowNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"workflow {workflow_id} not found") from None
    context = {"nav": "workflows", "workflow": workflow, "graph": workflow_graph(workflow)}
    return render(request, template, context, page=page)


@router.get("/workflows/{workflow_id}")
async def workflow_page(request: Request, workflow_id: UUID) -> Response:
    return await _one(request, workflow_id, "workflow.html", page=True)


@router.get("/fragments/workflows/{workflow_id}")
async def workflow_fragment(request: Request, workflow_id: UUID) -> Response:
    return await _one(request, workflow_id, "_workflow.html", page=False)
