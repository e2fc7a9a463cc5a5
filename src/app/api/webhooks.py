"""The webhook routes (v1): subscribe, list, read, delete; a subscription's deliveries; replay.

Subscriptions are the operators' (`operate`, audited); `read` may look at them, never at a
secret, which only the creation's answer shows. Deliveries are sent by the relay process, never
from a request.
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, RootModel

from app.access.keys import Scope
from app.api.audit import actor
from app.api.auth import authenticate
from app.api.deps import reading, transaction
from app.api.jobs import QueryText
from app.api.responses import AUTH, BODY, INVALID, UNAVAILABLE, Responses, responses
from app.api.schemas import ErrorBody
from app.errors import UnknownTask, WebhookTargetRefused
from app.jobs.registry import get_task, public_tasks
from app.operate import audit
from app.settings import get_settings
from app.webhooks import subscriptions as operating
from app.webhooks.subscriptions import CreatedWebhook, DeliveryList, WebhookView

router = APIRouter(prefix="/api/v1", tags=["webhooks"])

NO_WEBHOOK: Responses = {404: {"model": ErrorBody, "description": "No such webhook (or delivery)"}}
NOT_REPLAYABLE: Responses = {409: {"model": ErrorBody, "description": "The delivery is still pending"}}
ONE = responses(NO_WEBHOOK, INVALID, AUTH, UNAVAILABLE)
LOOKERS = (Scope.READ, Scope.OPERATE)
WebhookId = Annotated[UUID, Path(description="The subscription's id")]
DeliveryId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class WebhookList(RootModel[list[WebhookView]]):
    """Every subscription."""


class ReplayedDelivery(BaseModel):
    """A delivery asked to be sent again: pending until the sender takes it."""

    id: int
    webhook_id: UUID
    state: Literal["pending"]


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(min_length=1, max_length=2048, examples=["https://example.com/hooks/conveyor"])
    events: list[str] = Field(
        min_length=1, max_length=len(operating.EVENT_TYPES), examples=[["job.succeeded", "job.dead"]]
    )
    task: str | None = Field(default=None, min_length=1, max_length=200, examples=["app.tasks.example.echo"])


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


@router.post(
    "/webhooks",
    status_code=status.HTTP_201_CREATED,
    response_model=CreatedWebhook,
    responses=responses(BODY, INVALID, AUTH, UNAVAILABLE),
    operation_id="create_webhook",
    summary="Subscribe a URL to job events; the answer shows the signing secret, once",
)
async def create_webhook(body: WebhookRequest, request: Request, response: Response) -> CreatedWebhook:
    client = await authenticate(request, Scope.OPERATE)
    if body.task is not None and ((spec := get_task(body.task)) is None or not spec.public):
        raise UnknownTask(body.task, [t.name for t in public_tasks()])
    try:
        operating.check_events(body.events)
    except ValueError as error:
        raise _invalid("events", str(error)) from None
    async with transaction() as conn:
        try:
            made = await operating.create(
                conn, get_settings(), url=body.url, events=body.events, task=body.task, created_by=client.name
            )
        except WebhookTargetRefused as error:
            raise _invalid("url", str(error)) from None
        detail = {"url": made.url, "events": made.events, "task": made.task}
        await audit.record(
            conn, actor(request, client), audit.Action.WEBHOOK_CREATE, target=str(made.id), detail=detail
        )
    response.headers["Location"] = f"/api/v1/webhooks/{made.id}"
    return made


@router.get(
    "/webhooks",
    response_model=WebhookList,
    responses=responses(AUTH, UNAVAILABLE),
    operation_id="list_webhooks",
    summary="Every subscription, with how many deliveries wait and how many are dead",
)
async def list_webhooks(request: Request) -> WebhookList:
    await authenticate(request, *LOOKERS)
    async with reading() as conn:
        return WebhookList(await operating.all_subscriptions(conn))


@router.get("/webhooks/{webhook_id}", response_model=WebhookView, responses=ONE, operation_id="get_webhook")
async def get_webhook(webhook_id: WebhookId, request: Request) -> WebhookView:
    await authenticate(request, *LOOKERS)
    async with reading() as conn:
        return await operating.get(conn, webhook_id)


@router.delete(
    "/webhooks/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=ONE,
    operation_id="delete_webhook",
    summary="Unsubscribe: no delivery of it is sent again, and its deliveries go",
)
async def delete_webhook(webhook_id: WebhookId, request: Request) -> Response:
    client = await authenticate(request, Scope.OPERATE)
    async with transaction() as conn:
        url = await operating.delete(conn, webhook_id)
        await audit.record(
            conn,
            actor(request, client),
            audit.Action.WEBHOOK_DELETE,
            target=str(webhook_id),
            detail={"url": url},
        )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=DeliveryList,
    responses=ONE,
    operation_id="list_webhook_deliveries",
    summary="A subscription's deliveries, newest first: attempts, last status and error",
)
async def list_deliveries(
    webhook_id: WebhookId,
    request: Request,
    state: Annotated[Literal["pending", "delivered", "dead"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: QueryText = None,
) -> DeliveryList:
    await authenticate(request, *LOOKERS)
    cursor = cursor or None
    if cursor is not None:
        try:
            operating.decode_cursor(cursor)
        except ValueError:
            raise RequestValidationError(
                [{"loc": ("query", "cursor"), "msg": "invalid cursor", "type": "value_error"}]
            ) from None
    async with reading() as conn:
        return await operating.deliveries(conn, webhook_id, state=state, cursor=cursor, limit=limit)


@router.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ReplayedDelivery,
    responses=responses(NO_WEBHOOK, NOT_REPLAYABLE, INVALID, AUTH, UNAVAILABLE),
    operation_id="replay_webhook_delivery",
    summary="Send a dead (or delivered) delivery again, with the same event id",
)
async def replay_delivery(
    webhook_id: WebhookId, delivery_id: DeliveryId, request: Request
) -> ReplayedDelivery:
    client = await authenticate(request, Scope.OPERATE)
    async with transaction() as conn:
        await operating.replay(conn, webhook_id, delivery_id)
        await audit.record(
            conn,
            actor(request, client),
            audit.Action.WEBHOOK_REPLAY,
            target=str(webhook_id),
            detail={"delivery_id": delivery_id},
        )
    return ReplayedDelivery(id=delivery_id, webhook_id=webhook_id, state="pending")
