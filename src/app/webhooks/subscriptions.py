"""Webhook subscriptions as operators make and read them, and their deliveries: written once for
the API, the dashboard and the CLI (each face records the audit entry in the same transaction).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from app.errors import DeliveryNotReplayable, WebhookNotFound
from app.ledger import webhooks as ledger
from app.ledger.connections import AsyncConnection
from app.ledger.schema import JobState
from app.settings import Settings
from app.webhooks import signing, targets

EVENT_TYPES = tuple(f"job.{state.value}" for state in JobState)
DELIVERY_STATES = ("pending", "delivered", "dead")
BIGINT_MAX = 2**63 - 1


class WebhookView(BaseModel):
    id: UUID
    url: str
    events: list[str] = Field(examples=[["job.succeeded", "job.dead"]])
    task: str | None = Field(description="Only this task's jobs (null: every task)")
    created_by: str = Field(description="The key that made the subscription")
    created_at: datetime
    pending: int = Field(description="Deliveries waiting to be sent (or sent again)")
    dead: int = Field(description="Deliveries that failed every attempt (replayable)")
    deliveries_url: str


class CreatedWebhook(WebhookView):
    secret: str = Field(description="Signs every delivery; shown this once, never again")


class DeliveryView(BaseModel):
    id: int
    webhook_id: UUID
    event_id: str = Field(
        description="The event's cursor; the Conveyor-Event-Id header, the same on every attempt"
    )
    type: str = Field(examples=["job.succeeded"])
    job_id: UUID
    event_at: datetime
    state: str = Field(description="pending, delivered or dead")
    attempts: int
    last_status: int | None = Field(description="The HTTP status of the last attempt (null: no answer)")
    last_error: str | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None = Field(description="When a pending delivery is tried next")
    delivered_at: datetime | None
    created_at: datetime


class DeliveryList(BaseModel):
    items: list[DeliveryView]
    next_cursor: str | None


def check_events(events: list[str]) -> list[str]:
    """The event types, without repeats; ValueError naming one that does not exist."""
    for name in events:
        if name not in EVENT_TYPES:
            raise ValueError(f"unknown event type {name!r}; known: {', '.join(EVENT_TYPES)}")
    if not events:
        raise ValueError("name at least one event type")
    return list(dict.fromkeys(events))


def webhook_view(subscription: ledger.Subscription) -> WebhookView:
    return WebhookView(
        id=subscription.id,
        url=subscription.url,
        events=subscription.events,
        task=subscription.task,
        created_by=subscription.created_by,
        created_at=subscription.created_at,
        pending=subscription.pending,
        dead=subscription.dead,
        deliveries_url=f"/api/v1/webhooks/{subscription.id}/deliveries",
    )


def delivery_view(delivery: ledger.Delivery) -> DeliveryView:
    return DeliveryView(
        id=delivery.id,
        webhook_id=delivery.webhook_id,
        event_id=delivery.event_id,
        type=delivery.event_type,
        job_id=delivery.job_id,
        event_at=delivery.event_at,
        state=delivery.state,
        attempts=delivery.attempts,
        last_status=delivery.last_status,
        last_error=delivery.last_error,
        last_attempt_at=delivery.last_attempt_at,
        next_attempt_at=delivery.next_attempt_at if delivery.state == "pending" else None,
        delivered_at=delivery.delivered_at,
        created_at=delivery.created_at,
    )


async def create(
    conn: AsyncConnection,
    settings: Settings,
    *,
    url: str,
    events: list[str],
    task: str | None,
    created_by: str,
) -> CreatedWebhook:
    """A new subscription with a new secret; raises WebhookTargetRefused for a URL the policy
    refuses, ValueError for an unknown event type. The caller checked the task."""
    kinds = check_events(events)
    await targets.check_url(url, settings)
    secret = signing.new_secret()
    made = await ledger.insert(
        conn, webhook_id=uuid.uuid4(), url=url, events=kinds, task=task, secret=secret, created_by=created_by
    )
    return CreatedWebhook(**webhook_view(made).model_dump(), secret=secret)


async def all_subscriptions(conn: AsyncConnection) -> list[WebhookView]:
    return [webhook_view(s) for s in await ledger.subscriptions(conn)]


async def get(conn: AsyncConnection, webhook_id: UUID) -> WebhookView:
    found = await ledger.subscriptions(conn, webhook_id)
    if not found:
        raise WebhookNotFound(f"webhook {webhook_id}")
    return webhook_view(found[0])


async def delete(conn: AsyncConnection, webhook_id: UUID) -> str:
    """Delete a subscription and its deliveries; its URL."""
    url = await ledger.delete(conn, webhook_id)
    if url is None:
        raise WebhookNotFound(f"webhook {webhook_id}")
    return url


def decode_cursor(cursor: str) -> int:
    """The delivery id a page continues before; ValueError for a cursor no page handed out."""
    if not cursor.isascii() or not cursor.isdigit() or int(cursor) > BIGINT_MAX:
        raise ValueError(f"invalid cursor {cursor!r}")
    return int(cursor)


async def deliveries(
    conn: AsyncConnection,
    webhook_id: UUID,
    *,
    state: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> DeliveryList:
    """A subscription's deliveries newest first; raises WebhookNotFound, ValueError for a bad cursor."""
    before = None if cursor is None else decode_cursor(cursor)
    await get(conn, webhook_id)
    rows = await ledger.deliveries(conn, webhook_id, state=state, before=before, limit=limit + 1)
    next_cursor = str(rows[limit - 1].id) if len(rows) > limit else None
    return DeliveryList(items=[delivery_view(row) for row in rows[:limit]], next_cursor=next_cursor)


async def replay(conn: AsyncConnection, webhook_id: UUID, delivery_id: int) -> None:
    """Send a dead (or delivered) delivery again, from its first attempt."""
    if await ledger.replay(conn, webhook_id, delivery_id):
        return
    if await ledger.state_of(conn, webhook_id, delivery_id) is None:
        raise WebhookNotFound(f"delivery {delivery_id} of webhook {webhook_id}")
    raise DeliveryNotReplayable(delivery_id)


async def failed(conn: AsyncConnection, limit: int = 50) -> list[dict[str, Any]]:
    """Deliveries that failed lately (dead, or waiting after a failed attempt), for the dashboard."""
    return [
        {
            "id": row.id,
            "webhook_id": row.webhook_id,
            "url": row.url,
            "event_id": row.event_id,
            "type": row.event_type,
            "job_id": row.job_id,
            "state": row.state,
            "attempts": row.attempts,
            "last_status": row.last_status,
            "last_error": row.last_error,
            "last_attempt_at": row.last_attempt_at,
            "next_attempt_at": row.next_attempt_at,
        }
        for row in await ledger.failed(conn, limit)
    ]
