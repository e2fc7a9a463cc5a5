"""The Webhooks page: every subscription, and the deliveries that failed lately (dead, or waiting
to be tried again) with a Replay button for `operate` keys."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from app.api.audit import actor
from app.api.deps import reading, transaction
from app.dashboard.access import operator, viewer
from app.dashboard.actions import back, form_fields
from app.dashboard.rendering import Notice, render
from app.dashboard.security import require_same_origin
from app.errors import DeliveryNotReplayable, WebhookNotFound
from app.operate import audit
from app.webhooks import subscriptions

FAILED_SHOWN = 50

pages = APIRouter(prefix="/dashboard", include_in_schema=False, dependencies=[Depends(viewer)])
acts = APIRouter(
    prefix="/dashboard",
    include_in_schema=False,
    dependencies=[Depends(require_same_origin), Depends(operator)],
)


async def _context() -> dict[str, object]:
    async with reading() as conn:
        return {
            "hooks": await subscriptions.all_subscriptions(conn),
            "failed": await subscriptions.failed(conn, FAILED_SHOWN),
        }


@pages.get("/webhooks")
async def webhooks_page(request: Request) -> Response:
    return render(request, "webhooks.html", {"nav": "webhooks", **await _context()})


@pages.get("/fragments/webhooks")
async def webhooks_fragment(request: Request) -> Response:
    return render(request, "_webhooks.html", await _context(), page=False)


@acts.post("/webhooks/{webhook_id}/deliveries/{delivery_id}/replay")
async def replay_delivery(request: Request, webhook_id: UUID, delivery_id: int) -> RedirectResponse:
    fields = await form_fields(request)
    try:
        async with transaction() as conn:
            await subscriptions.replay(conn, webhook_id, delivery_id)
            await audit.record(
                conn,
                actor(request, request.state.client),
                audit.Action.WEBHOOK_REPLAY,
                target=str(webhook_id),
                detail={"delivery_id": delivery_id},
            )
        notice = Notice("delivery_replayed", 1)
    except (WebhookNotFound, DeliveryNotReplayable):
        notice = Notice("no_delivery")
    return back(request, fields, "/dashboard/webhooks", notice)
