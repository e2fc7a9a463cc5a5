"""A Server-Sent Events stream of job events: caught up from the log, then followed live.

A stream subscribes to the pump first, then reads the log from its cursor in pages (its own
short-lived connection) until it has passed where its subscription starts; from there the
pump's deliveries carry it on. Its position only moves forward, and an event is sent only when
its cursor is past the position, so the hand-over repeats nothing; since the subscription gets
every event after its start, and the catch-up everything up to at least there, it skips
nothing. A subscription that overflowed is replaced and the stream catches up again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson
import psycopg

from app.follow.pump import Delivery, EventPump, JobViews, Subscription
from app.ledger import events
from app.ledger.events import Cursor, Event, EventFilter

KEEPALIVE_SECONDS = 15.0
# While the log's horizon is behind where the subscription starts (a rare, short wait).
BEHIND_PAUSE = 0.01
Connect = Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]


def frame(event: Event, job: dict[str, Any] | None) -> bytes:
    """One SSE event: the job as it is now, with the state and attempts the event recorded."""
    data = dict(job) if job is not None else {"id": event.job_id, "task": event.task, "queue": event.queue}
    data["state"], data["attempts"] = event.state, event.attempt
    body = orjson.dumps(data).decode()
    return f"id: {event.cursor}\nevent: {event.state}\ndata: {body}\n\n".encode()


async def follow(
    pump: EventPump,
    where: EventFilter,
    after: Cursor | None,
    *,
    connect: Connect,
    views: JobViews,
    keepalive: float = KEEPALIVE_SECONDS,
) -> AsyncIterator[bytes]:
    subscription = pump.subscribe(where, views=True)
    position = after if after is not None else subscription.start
    try:
        while True:
            if subscription.overflowed:
                pump.unsubscribe(subscription)
                subscription = pump.subscribe(where, views=True)
            if position < subscription.start:
                async for chunk, reached in _catch_up(position, subscription, connect, views):
                    position = reached
                    if chunk:
                        yield chunk
            batch = await subscription.take(keepalive)
            if subscription.overflowed:
                continue
            if not batch:
                yield b": keep-alive\n\n"
                continue
            chunks, position = _live(batch, position)
            if chunks:
                yield b"".join(chunks)
    finally:
        pump.unsubscribe(subscription)


def _live(batch: list[Delivery], position: Cursor) -> tuple[list[bytes], Cursor]:
    chunks = []
    for delivery in batch:
        if delivery.event.cursor > position:
            chunks.append(frame(delivery.event, delivery.job))
            position = delivery.event.cursor
    return chunks, position


async def _catch_up(
    position: Cursor, subscription: Subscription, connect: Connect, views: JobViews
) -> AsyncIterator[tuple[bytes, Cursor]]:
    """The log's events after `position` up to at least the subscription's start, a page at a time."""
    async with connect() as conn:
        while True:
            page = await events.read(conn, position, subscription.where, limit=500, jobs=True)
            jobs = {job_id: views(row) for job_id, row in page.jobs.items()}
            yield b"".join(frame(e, jobs.get(e.job_id)) for e in page.events), page.next
            position = page.next
            if not page.full and position >= subscription.start:
                return
            if not page.full:
                await asyncio.sleep(BEHIND_PAUSE)
