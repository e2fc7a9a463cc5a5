"""The audit log as operators write and read it: who acted (an `Actor`), what they did, to what.

Every operator action records one entry through `record`, in the same transaction as the
action, whichever face it came through (API, dashboard, CLI): an action that fails rolls its
entry back with it, and one that commits cannot lose its entry. A bulk action done in many
batches records one entry with the total, in the transaction of its last batch.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, Field

from app.ledger import audit as ledger
from app.ledger.audit import Entry, NewEntry
from app.ledger.connections import AsyncConnection, SyncConnection
from app.ledger.schedules import NewSchedule

__all__ = [
    "Action",
    "Actor",
    "Caller",
    "Entry",
    "EntryView",
    "cli_actor",
    "decode_cursor",
    "entry_view",
    "page",
    "record",
    "record_schedule_created",
    "record_sync",
]


BIGINT_MAX = 2**63 - 1  # the largest id audit_log's bigserial can hold


class Action(StrEnum):
    """What an entry says was done: short dotted verbs, `<what>.<verb>`."""

    JOB_REPLAY = "job.replay"
    JOB_CANCEL = "job.cancel"
    JOB_DISCARD = "job.discard"
    WORKFLOW_CANCEL = "workflow.cancel"
    DEAD_REPLAY_ALL = "dead.replay_all"
    DEAD_DISCARD_ALL = "dead.discard_all"
    DLQ_PURGE = "dlq.purge"
    SCHEDULE_CREATE = "schedule.create"
    SCHEDULE_DELETE = "schedule.delete"
    SCHEDULE_PAUSE = "schedule.pause"
    SCHEDULE_RESUME = "schedule.resume"
    QUEUE_PAUSE = "queue.pause"
    QUEUE_RESUME = "queue.resume"
    QUEUE_MIGRATE = "queue.migrate"
    WEBHOOK_CREATE = "webhook.create"
    WEBHOOK_DELETE = "webhook.delete"
    WEBHOOK_REPLAY = "webhook.replay"
    KEY_CREATE = "key.create"
    KEY_REVOKE = "key.revoke"
    SESSION_SIGN_IN = "session.sign_in"
    SESSION_SIGN_OUT = "session.sign_out"


class Caller(Protocol):
    """An authenticated key, as the faces hold it (`app.access.keys.Client`)."""

    @property
    def key_id(self) -> str: ...

    @property
    def name(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a key (its id and name) with the request it sent, or a shell user (no key)."""

    key_id: str | None
    key_name: str
    request_id: str | None = None
    client_address: str | None = None

    @classmethod
    def of(cls, caller: Caller, *, request_id: str | None, client_address: str | None) -> Actor:
        return cls(caller.key_id, caller.name, request_id, client_address)


def cli_actor() -> Actor:
    """The operator at a shell: `cli:<os user>@<host>`. The CLI reads the ledger directly, with
    no key, so the login and the machine are what names who acted."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (a bare container)
        user = f"uid{os.getuid()}"
    return Actor(None, f"cli:{user}@{socket.gethostname()}")


def _entry(
    actor: Actor, action: Action, target: str | None, count: int | None, detail: Mapping[str, Any] | None
) -> NewEntry:
    return NewEntry(
        key_id=actor.key_id,
        key_name=actor.key_name,
        action=action.value,
        target=target,
        count=count,
        request_id=actor.request_id,
        client_address=actor.client_address,
        detail=detail,
    )


async def record(
    conn: AsyncConnection,
    actor: Actor,
    action: Action,
    *,
    target: str | None = None,
    count: int | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Write the entry in the caller's transaction (the action's own)."""
    await ledger.insert_async(conn, _entry(actor, action, target, count, detail))


def record_sync(
    conn: SyncConnection,
    actor: Actor,
    action: Action,
    *,
    target: str | None = None,
    count: int | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    ledger.insert(conn, _entry(actor, action, target, count, detail))


async def record_schedule_created(conn: AsyncConnection, actor: Actor, schedule: NewSchedule) -> None:
    """`schedule.create`, with what the schedule fires and when."""
    detail = {
        "task": schedule.task,
        "cron": schedule.cron,
        "every_seconds": schedule.every_seconds,
        "timezone": schedule.timezone,
    }
    await record(conn, actor, Action.SCHEDULE_CREATE, target=schedule.name, detail=detail)


def decode_cursor(cursor: str) -> int:
    """The id a page continues before; ValueError for a cursor no page handed out."""
    if not cursor.isascii() or not cursor.isdigit() or int(cursor) > BIGINT_MAX:
        raise ValueError(f"invalid cursor {cursor!r}")
    return int(cursor)


async def page(
    conn: AsyncConnection,
    *,
    action: str | None = None,
    key_name: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Entry], str | None]:
    """Entries newest first, of one action and one key name when given; and the cursor of the
    next page (None: this is the last)."""
    before = None if cursor is None else decode_cursor(cursor)
    rows = await ledger.page_async(conn, action=action, key_name=key_name, before=before, limit=limit + 1)
    if len(rows) > limit:
        return rows[:limit], str(rows[limit - 1].id)
    return rows, None


class EntryView(BaseModel):
    """An audit entry as the API and `conveyor audit --json` show it."""

    id: int
    at: datetime
    key_name: str = Field(description="The key that acted, or `cli:<user>@<host>` for the CLI")
    key_id: str | None
    action: str = Field(examples=["job.replay"])
    target: str | None = Field(description="A job id, a schedule name or a key name")
    count: int | None = Field(description="How many jobs a bulk action reached")
    request_id: str | None
    client_address: str | None
    detail: dict[str, Any] | None


def entry_view(entry: Entry) -> EntryView:
    return EntryView(
        id=entry.id,
        at=entry.at,
        key_name=entry.key_name,
        key_id=entry.key_id,
        action=entry.action,
        target=entry.target,
        count=entry.count,
        request_id=entry.request_id,
        client_address=entry.client_address,
        detail=entry.detail,
    )
