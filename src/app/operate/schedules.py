"""Schedules as operators see and steer them: pages, one schedule, the jobs it made; pause,
resume, delete. Written once for the API, the dashboard and the CLI.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import Row, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import ScheduleNotFound
from app.jobs import schedules as timings
from app.ledger import schedules as ledger
from app.ledger.schema import schedules

# The jobs of each schedule newest first, a few per schedule, from the (schedule, created_at)
# index: one short index range per schedule, whatever the ledger holds.
RECENT_JOBS = text(
    """
    SELECT s.name AS schedule, j.id, j.state, j.scheduled_for, j.created_at
    FROM unnest(CAST(:names AS text[])) AS s(name)
    CROSS JOIN LATERAL (
        SELECT id, state, scheduled_for, created_at FROM jobs
        WHERE jobs.schedule = s.name
        ORDER BY created_at DESC, id DESC
        LIMIT :per_schedule
    ) AS j
    ORDER BY s.name, j.created_at DESC, j.id DESC
    """
)


class ScheduleView(BaseModel):
    name: str
    task: str
    queue: str
    payload: dict[str, Any]
    cron: str | None
    every_seconds: int | None
    timezone: str
    paused: bool
    source: Literal["api", "code"]
    next_run_at: datetime
    last_run_at: datetime | None
    created_at: datetime
    updated_at: datetime
    jobs_url: str


def schedule_view(row: Row[Any]) -> ScheduleView:
    return ScheduleView(
        name=row.name,
        task=row.task,
        queue=row.queue,
        payload=row.payload,
        cron=row.cron,
        every_seconds=row.every_seconds,
        timezone=row.timezone,
        paused=row.paused,
        source=row.source,
        next_run_at=row.next_run_at,
        last_run_at=row.last_run_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        jobs_url=f"/api/v1/jobs?schedule={row.name}",
    )


def describe(row: Row[Any]) -> str:
    """'every 60s' or 'cron '0 3 * * *' (Europe/Paris)'."""
    if row.every_seconds is not None:
        return f"every {row.every_seconds}s"
    return f"cron {row.cron}" + ("" if row.timezone == "UTC" else f" ({row.timezone})")


async def get(conn: AsyncConnection, name: str) -> Row[Any]:
    row = (await conn.execute(select(schedules).where(schedules.c.name == name))).first()
    if row is None:
        raise ScheduleNotFound(name)
    return row


def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """Raises ValueError for a cursor this API did not hand out."""
    name = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
    timings.check_name(name)
    return name


async def page(
    conn: AsyncConnection, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[Row[Any]], str | None]:
    """Schedules by name, keyset-paged."""
    query = select(schedules).order_by(schedules.c.name).limit(limit + 1)
    if cursor is not None:
        query = query.where(schedules.c.name > decode_cursor(cursor))
    rows = list((await conn.execute(query)).all())
    if len(rows) > limit:
        return rows[:limit], encode_cursor(rows[limit - 1].name)
    return rows, None


async def recent_jobs(
    conn: AsyncConnection, names: list[str], per_schedule: int = 5
) -> dict[str, list[Row[Any]]]:
    """The newest jobs each schedule made, newest first."""
    made: dict[str, list[Row[Any]]] = {name: [] for name in names}
    if names:
        rows = await conn.execute(RECENT_JOBS, {"names": names, "per_schedule": per_schedule})
        for row in rows:
            made[row.schedule].append(row)
    return made


async def pause(conn: AsyncConnection, name: str) -> None:
    if not await ledger.pause(conn, name):
        raise ScheduleNotFound(name)


async def resume(conn: AsyncConnection, name: str) -> None:
    """Fire again from the next tick after now; the ticks missed while paused never fire."""
    row = await get(conn, name)
    when = timings.timing(row.cron, row.every_seconds, row.timezone)
    if not await ledger.resume(conn, name, when.next_after(await ledger.database_now_async(conn))):
        raise ScheduleNotFound(name)


async def delete(conn: AsyncConnection, name: str) -> None:
    if not await ledger.delete(conn, name):
        raise ScheduleNotFound(name)
