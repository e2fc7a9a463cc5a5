"""The audit log on the dashboard (`operate` keys only, as acting is), and the entries of signing
in and out.

The page is read-only and refreshes only when asked: an operator reading down the log does
not want the rows moving under them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import AfterValidator

from app.access.keys import Client
from app.api.audit import actor
from app.api.deps import reading, transaction
from app.dashboard.access import operator, viewer
from app.dashboard.rendering import query, render
from app.errors import Forbidden, RateLimited, SignInRequired, Unauthenticated
from app.jobs.validation import storable_text
from app.operate import audit

router = APIRouter(prefix="/dashboard", include_in_schema=False, dependencies=[Depends(operator)])

PAGE_SIZE = 50
Text = Annotated[str, Query(max_length=200), AfterValidator(storable_text)]


@router.get("/audit")
async def audit_page(request: Request, action: Text = "", key: Text = "", cursor: Text = "") -> Response:
    try:
        if cursor:
            audit.decode_cursor(cursor)
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "invalid cursor") from None
    async with reading() as conn:
        entries, next_cursor = await audit.page(
            conn, action=action or None, key_name=key or None, cursor=cursor or None, limit=PAGE_SIZE
        )
    filters = {"action": action, "key": key}
    context = {
        "nav": "audit",
        "entries": entries,
        "filters": filters,
        "actions": [known.value for known in audit.Action],
        "cursor": cursor,
        "first_query": query(**filters),
        "next_query": query(**filters, cursor=next_cursor) if next_cursor else None,
    }
    return render(request, "audit.html", context)


async def record_sign_in(request: Request, client: Client) -> None:
    """`session.sign_in` for the key that just signed in."""
    async with transaction() as conn:
        await audit.record(conn, actor(request, client), audit.Action.SESSION_SIGN_IN)


async def record_sign_out(request: Request) -> None:
    """`session.sign_out` for the key the request's session belongs to; nothing when the session
    no longer resolves (expired, tampered, its key revoked): there is nobody to name. Call it
    before the session is ended."""
    try:
        client = await viewer(request)
    except (SignInRequired, Unauthenticated, Forbidden, RateLimited):
        return
    async with transaction() as conn:
        await audit.record(conn, actor(request, client), audit.Action.SESSION_SIGN_OUT)
