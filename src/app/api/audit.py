"""The audit log over HTTP (`GET /api/v1/audit`, `operate`), and who acts in a request.

Every route that changes something records an entry through `app.operate.audit.record`,
with the `actor` of its request: the key's id and name, the request id (the one sent back in
`X-Request-ID` and bound to every log line of the request) and the client's address.
"""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel

from app.access.keys import Client, Scope
from app.api.auth import authenticate
from app.api.deps import reading
from app.api.responses import AUTH, INVALID, UNAVAILABLE, responses
from app.jobs.validation import storable_text
from app.operate import audit
from app.operate.audit import Actor, EntryView, entry_view

router = APIRouter(prefix="/api/v1", tags=["audit"])

Checked = AfterValidator(lambda v: v and storable_text(v))
ActionFilter = Annotated[
    str | None, Query(max_length=200, description="Only this action, e.g. `job.replay`"), Checked
]
KeyFilter = Annotated[str | None, Query(max_length=200, description="Only what this key name did"), Checked]
CursorParam = Annotated[str | None, Query(max_length=200, description="`next_cursor` of a page"), Checked]


class AuditList(BaseModel):
    items: list[EntryView]
    next_cursor: str | None


def actor(request: Request, client: Client) -> Actor:
    """Who acts in this request: its key, its request id and where it came from."""
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    address = request.client.host if request.client is not None else None
    return Actor.of(client, request_id=request_id, client_address=address)


@router.get(
    "/audit",
    operation_id="list_audit",
    response_model=AuditList,
    responses=responses(INVALID, AUTH, UNAVAILABLE),
    summary="Who did what: operator actions, key changes, sign-ins and sign-outs, newest first",
)
async def list_audit(
    request: Request,
    action: ActionFilter = None,
    key: KeyFilter = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: CursorParam = None,
) -> AuditList:
    await authenticate(request, Scope.OPERATE)
    cursor = cursor or None  # `?cursor=` is the first page
    if cursor is not None:
        try:
            audit.decode_cursor(cursor)
        except ValueError:
            raise RequestValidationError(
                [{"loc": ("query", "cursor"), "msg": "invalid cursor", "type": "value_error"}]
            ) from None
    async with reading() as conn:
        entries, next_cursor = await audit.page(
            conn, action=action or None, key_name=key or None, cursor=cursor, limit=limit
        )
    return AuditList(items=[entry_view(entry) for entry in entries], next_cursor=next_cursor)
