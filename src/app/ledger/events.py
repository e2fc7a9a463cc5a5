"""Reading the event log exactly: in commit order, none skipped, none repeated.

Each state change of a job writes one row of `job_events` in the transaction that made the
change. A row's `id` comes from a sequence, handed out when the row is inserted, not when its
transaction commits: with two writers, the one holding id 8 may commit after the one holding
id 9, so a reader that took "id > 8" after seeing 9 would never see 8. The log is therefore
followed by the sort key (xid, id), where `xid` is the writing transaction's id
(`pg_current_xact_id()`, which the insert assigns anyway), and read only below a horizon H:

    WHERE (xid, id) > cursor AND xid < H ORDER BY xid, id

The horizon is the SQL function `event_horizon()` (migration 0015_event_horizon, where the
argument that the read is exact is written, once): every transaction with an xid below it that
could write an event has ended. Both readers of the log use it: `read_events` here, and the
webhooks' fan-out. A transaction of this database that has an xid and stays open delays every
event behind it until it ends: keep transactions that write the ledger short.

A cursor is "<xid>-<id>" of the last event delivered. The log is pruned as a prefix in
(xid, id) order (retention.py), so a cursor whose event is gone is older than what is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from app.errors import InvalidCursor
from app.ledger import queries
from app.ledger.connections import AsyncConnection, run_async

_CURSOR = re.compile(r"^(\d{1,19})-(\d{1,19})$")


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A place in the log: after the event (xid, id); (H, 0) is "after everything below H"."""

    xid: int
    id: int

    def __str__(self) -> str:
        return f"{self.xid}-{self.id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        match = _CURSOR.match(text.strip())
        if match is None or max(int(match[1]), int(match[2])) >= 2**63:
            raise InvalidCursor(text)
        return cls(int(match[1]), int(match[2]))


@dataclass(frozen=True, slots=True)
class Event:
    cursor: Cursor
    at: datetime
    job_id: UUID
    task: str
    queue: str
    client_id: str | None
    workflow_id: UUID | None
    state: str
    attempt: int


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a reader wants (None: any)."""

    task: str | None = None
    job_id: UUID | None = None
    workflow_id: UUID | None = None
    client_id: str | None = None

    def matches(self, event: Event) -> bool:
        return (
            (self.task is None or event.task == self.task)
            and (self.job_id is None or event.job_id == self.job_id)
            and (self.workflow_id is None or event.workflow_id == self.workflow_id)
            and (self.client_id is None or event.client_id == self.client_id)
        )


ANY = EventFilter()
_END = Cursor(2**63 - 1, 0)
# "0-0": before every event, so the read starts from the oldest event kept. It names no event, so
# it is never gone (a cursor naming an event the pruning took is).
OLDEST = Cursor(0, 0)


# The job columns `read(..., jobs=True)` returns with each event, in the statement's order.
JOB_FIELDS = (
    "id", "task", "queue", "state", "priority", "run", "attempts", "max_attempts", "progress",
    "payload", "created_at", "updated_at", "available_at", "started_at", "finished_at",
    "last_error", "result", "worker_id", "client_id", "parent_id", "schedule", "scheduled_for",
    "cancel_requested_at", "unique_key", "workflow_id", "step",
)  # fmt: skip
_EVENT_COLUMNS = 12


@dataclass(frozen=True, slots=True)
class Page:
    events: list[Event]
    # Where the next read starts: after the last event, or at the horizon when none was read
    # and the whole log below it has been passed (nothing below it can appear any more).
    next: Cursor
    full: bool
    horizon: int
    # Events committed above the horizon wait for an older transaction to end: look again soon.
    held: bool
    # With `jobs=True`: the row of each event's job, read in the events' own snapshot (a job
    # already pruned is left out), by JOB_FIELDS.
    jobs: dict[UUID, dict[str, Any]] = field(default_factory=dict)


async def read(
    conn: AsyncConnection, after: Cursor, where: EventFilter = ANY, limit: int = 500, *, jobs: bool = False
) -> Page:
    """The events after `after` that can be read exactly now, in order, at most `limit`; with
    `jobs`, their jobs' rows too, in the same statement.

    `conn` must be in autocommit mode (the statement is its own transaction: see above)."""
    params = {
        "after_xid": str(after.xid),
        "after_id": after.id,
        "task": where.task,
        "job_id": where.job_id,
        "workflow_id": where.workflow_id,
        "client_id": where.client_id,
        "limit": limit,
        "jobs": jobs,
    }
    rows = (await run_async(conn, queries.READ_EVENTS, params, prepare=True)).rows
    horizon, held = int(rows[0][0]), bool(rows[0][11])
    events = [_event(row) for row in rows if row[2] is not None]
    read_jobs = {
        row[4]: dict(zip(JOB_FIELDS, row[_EVENT_COLUMNS:], strict=True))
        for row in rows
        if row[12] is not None
    }
    if len(events) >= limit:
        return Page(events, events[-1].cursor, full=True, horizon=horizon, held=held, jobs=read_jobs)
    # Fewer than asked: every event of the filter below the horizon has been read.
    return Page(
        events, max(after, Cursor(horizon, 0)), full=False, horizon=horizon, held=held, jobs=read_jobs
    )


async def head(conn: AsyncConnection) -> Cursor:
    """Where a reader that starts "from now" starts: events of transactions still open, or later."""
    page = await read(conn, _END, limit=1)
    return Cursor(page.horizon, 0)


async def exists(conn: AsyncConnection, cursor: Cursor) -> bool:
    """Whether the event a cursor names is still kept (`OLDEST` always is: it names none)."""
    if cursor == OLDEST:
        return True
    rows = (await run_async(conn, queries.EVENT_EXISTS, {"xid": str(cursor.xid), "id": cursor.id})).rows
    return bool(rows[0][0])


def _event(row: tuple[Any, ...]) -> Event:
    _, xid, event_id, at, job_id, task, queue, client_id, workflow_id, state, attempt, _ = row[
        :_EVENT_COLUMNS
    ]
    return Event(Cursor(int(xid), event_id), at, job_id, task, queue, client_id, workflow_id, state, attempt)
