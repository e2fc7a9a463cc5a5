"""Webhook subscriptions and their deliveries in the ledger.

The fan-out turns events of the log (`job_events`) into deliveries, one statement per step
that also moves its mark, so a delivery exists if and only if the mark passed its event. A
sender takes due deliveries with a lease (the take counts the attempt) and writes what the
attempt came to, fenced by that count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from app.ledger import queries
from app.ledger.connections import AsyncConnection, SyncConnection, run, run_async


@dataclass(frozen=True, slots=True)
class Subscription:
    id: UUID
    url: str
    events: list[str]
    task: str | None
    created_by: str
    created_at: datetime
    pending: int = 0
    dead: int = 0


@dataclass(frozen=True, slots=True)
class FanOut:
    """One step of the fan-out: whether this relay held the mark, the events it passed, the
    deliveries they made."""

    held: bool
    events: int
    deliveries: int


@dataclass(frozen=True, slots=True)
class Due:
    """A delivery taken to be sent: `attempt` is this attempt's number (the fencing token)."""

    id: int
    webhook_id: UUID
    url: str
    secret: str
    event_id: str
    event_type: str
    event_at: datetime
    data: Any
    attempt: int


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    webhook_id: UUID
    event_id: str
    event_type: str
    job_id: UUID
    event_at: datetime
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Failed:
    """A delivery that failed lately, with its subscription's URL (the dashboard's list)."""

    id: int
    webhook_id: UUID
    url: str
    event_id: str
    event_type: str
    job_id: UUID
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None


async def insert(
    conn: AsyncConnection,
    *,
    webhook_id: UUID,
    url: str,
    events: Sequence[str],
    task: str | None,
    secret: str,
    created_by: str,
) -> Subscription:
    params = {
        "id": webhook_id,
        "url": url,
        "events": list(events),
        "task": task,
        "secret": secret,
        "created_by": created_by,
    }
    row = (await run_async(conn, queries.INSERT_WEBHOOK, params)).rows[0]
    return Subscription(*row)


async def subscriptions(conn: AsyncConnection, webhook_id: UUID | None = None) -> list[Subscription]:
    """Every subscription oldest first (or the one named), with its pending and dead counts."""
    rows = (await run_async(conn, queries.LIST_WEBHOOKS, {"id": webhook_id})).rows
    return [
        Subscription(row[0], row[1], row[2], row[3], row[4], row[5], int(row[6]), int(row[7])) for row in rows
    ]


async def delete(conn: AsyncConnection, webhook_id: UUID) -> str | None:
    """Delete a subscription with its deliveries; its URL, or None when there was none."""
    rows = (await run_async(conn, queries.DELETE_WEBHOOK, {"id": webhook_id})).rows
    return str(rows[0][0]) if rows else None


def fan_out(conn: SyncConnection, limit: int) -> FanOut:
    """One step of the fan-out (in the caller's transaction, or its own on an autocommit one)."""
    held, events, made, _moved = run(conn, queries.FAN_OUT_EVENTS, {"limit": limit}).rows[0]
    return FanOut(bool(held), int(events), int(made))


def take(conn: SyncConnection, limit: int, lease_seconds: float) -> list[Due]:
    rows = run(conn, queries.TAKE_DELIVERIES, {"limit": limit, "lease": lease_seconds}).rows
    return [Due(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to: `state` delivered, pending (due again in `retry_in` seconds)
    or dead; the answer's status (None: no answer) and the error (None: a 2xx)."""

    due: Due
    state: str
    status: int | None
    error: str | None
    retry_in: float = 0.0


def finish(conn: SyncConnection, outcomes: Sequence[Outcome]) -> set[int]:
    """Write what the attempts came to, in one statement; the ids written (an attempt whose
    lease was lost writes nothing)."""
    params = {
        "ids": [o.due.id for o in outcomes],
        "attempts": [o.due.attempt for o in outcomes],
        "states": [o.state for o in outcomes],
        "statuses": [o.status for o in outcomes],
        "errors": [o.error for o in outcomes],
        "retry_in": [o.retry_in for o in outcomes],
    }
    return {int(row[0]) for row in run(conn, queries.FINISH_DELIVERIES, params).rows}


async def replay(conn: AsyncConnection, webhook_id: UUID, delivery_id: int) -> bool:
    """Make a dead or delivered delivery due again; False when it is neither (or not there)."""
    params = {"id": delivery_id, "webhook_id": webhook_id}
    return bool((await run_async(conn, queries.REPLAY_DELIVERY, params)).rows)


async def state_of(conn: AsyncConnection, webhook_id: UUID, delivery_id: int) -> str | None:
    params = {"id": delivery_id, "webhook_id": webhook_id}
    rows = (await run_async(conn, queries.DELIVERY_STATE, params)).rows
    return str(rows[0][0]) if rows else None


async def deliveries(
    conn: AsyncConnection, webhook_id: UUID, *, state: str | None, before: int | None, limit: int
) -> list[Delivery]:
    params = {"webhook_id": webhook_id, "state": state, "before": before, "limit": limit}
    return [Delivery(*row) for row in (await run_async(conn, queries.DELIVERIES_PAGE, params)).rows]


async def failed(conn: AsyncConnection, limit: int) -> list[Failed]:
    return [Failed(*row) for row in (await run_async(conn, queries.FAILED_DELIVERIES, {"limit": limit})).rows]


def prune(conn: SyncConnection, state: str, retain_seconds: float, limit: int) -> int:
    """Delete up to `limit` delivered or dead deliveries older than `retain_seconds`; how many."""
    if state not in ("delivered", "dead"):
        raise ValueError(f"only finished deliveries are pruned, not {state!r} ones")
    return run(
        conn, queries.PRUNE_DELIVERIES, {"state": state, "retain": retain_seconds, "limit": limit}
    ).rowcount
