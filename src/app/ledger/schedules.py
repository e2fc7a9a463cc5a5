"""The schedules table: creating, declaring, firing (take, advance), pausing, resuming, deleting.

A tick's job goes in through the jobs' one INSERT (`ledger.jobs.insert`) with the schedule's
name and the tick; its unique (schedule, scheduled_for) index makes a tick fire once,
whatever relays take the schedule at once or die holding it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from app.ledger import queries
from app.ledger.connections import AsyncConnection, SyncConnection, run, run_async

# The advisory lock that creates of schedules take turns on ("sched" in ASCII).
SCHEDULE_COUNT_LOCK = 0x7363686564
Inserted = Literal["inserted", "name taken", "full"]


@dataclass(frozen=True, slots=True)
class NewSchedule:
    """A schedule about to be written: validated, its payload already JSON, its first tick known."""

    name: str
    task: str
    queue: str
    payload_json: str
    max_attempts: int
    cron: str | None
    every_seconds: int | None
    timezone: str
    next_run_at: datetime

    def params(self) -> dict[str, object]:
        return {
            "name": self.name,
            "task": self.task,
            "queue": self.queue,
            "payload": self.payload_json,
            "max_attempts": self.max_attempts,
            "cron": self.cron,
            "every_seconds": self.every_seconds,
            "timezone": self.timezone,
            "next_run_at": self.next_run_at,
        }


@dataclass(frozen=True, slots=True)
class DueSchedule:
    """A due schedule a relay holds locked, with the database's clock (`now`)."""

    name: str
    task: str
    queue: str
    payload_json: str
    max_attempts: int
    cron: str | None
    every_seconds: int | None
    timezone: str
    next_run_at: datetime
    now: datetime


@dataclass(frozen=True, slots=True)
class Advance:
    """A fired schedule's next run, and the tick it fired last (None: it fired none)."""

    name: str
    next_run_at: datetime
    last_run_at: datetime | None


def database_now(conn: SyncConnection) -> datetime:
    value: datetime = run(conn, queries.DATABASE_NOW).rows[0][0]
    return value


async def database_now_async(conn: AsyncConnection) -> datetime:
    value: datetime = (await run_async(conn, queries.DATABASE_NOW)).rows[0][0]
    return value


async def insert_async(conn: AsyncConnection, schedule: NewSchedule, max_schedules: int) -> Inserted:
    """Insert a schedule unless its name is taken or `max_schedules` exist; holds the count's
    lock until the caller's transaction ends, so concurrent creates never pass the limit."""
    await run_async(conn, queries.LOCK_SCHEDULE_COUNT, {"lock_key": SCHEDULE_COUNT_LOCK})
    params = {**schedule.params(), "max_schedules": max_schedules}
    name, _, exists = (await run_async(conn, queries.INSERT_SCHEDULE, params)).rows[0]
    if name is not None:
        return "inserted"
    return "name taken" if exists else "full"


def upsert_declared(conn: SyncConnection, declared: Sequence[NewSchedule]) -> list[str]:
    """Write the schedules tasks declare in code; the names added or changed."""
    if not declared:
        return []
    params = {
        "names": [s.name for s in declared],
        "tasks": [s.task for s in declared],
        "queues": [s.queue for s in declared],
        "payloads": [s.payload_json for s in declared],
        "max_attempts": [s.max_attempts for s in declared],
        "crons": [s.cron for s in declared],
        "every_seconds": [s.every_seconds for s in declared],
        "timezones": [s.timezone for s in declared],
        "next_runs": [s.next_run_at for s in declared],
    }
    return [str(row[0]) for row in run(conn, queries.UPSERT_DECLARED_SCHEDULES, params).rows]


def take_due(conn: SyncConnection, limit: int) -> list[DueSchedule]:
    """Due schedules, locked for the caller's transaction (other relays skip them)."""
    return [DueSchedule(*row) for row in run(conn, queries.TAKE_DUE_SCHEDULES, {"limit": limit}).rows]


def advance(conn: SyncConnection, advances: Sequence[Advance]) -> None:
    if not advances:
        return
    params = {
        "names": [a.name for a in advances],
        "next_runs": [a.next_run_at for a in advances],
        "last_runs": [a.last_run_at for a in advances],
    }
    run(conn, queries.ADVANCE_SCHEDULES, params)


def seconds_until_next_tick(conn: SyncConnection) -> float | None:
    value = run(conn, queries.SECONDS_UNTIL_NEXT_TICK).rows[0][0]
    return None if value is None else float(value)


async def pause(conn: AsyncConnection, name: str) -> bool:
    """False when there is no such schedule."""
    return bool((await run_async(conn, queries.PAUSE_SCHEDULE, {"name": name})).rows)


async def resume(conn: AsyncConnection, name: str, next_run_at: datetime) -> bool:
    """Resume a paused schedule from `next_run_at` (a running one is left as it is); False when
    there is no such schedule."""
    params = {"name": name, "next_run_at": next_run_at}
    return bool((await run_async(conn, queries.RESUME_SCHEDULE, params)).rows)


async def delete(conn: AsyncConnection, name: str) -> bool:
    """False when there is no such schedule."""
    return bool((await run_async(conn, queries.DELETE_SCHEDULE, {"name": name})).rows)
