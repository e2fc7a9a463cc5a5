"""The audit_log table: who did what (an operator action, a sign-in), when, to what, how many.

An entry is written in the caller's transaction, so it commits with the action it tells of
and rolls back with it. Entries are read newest first, paged by id, and pruned by age.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from app.ledger import queries
from app.ledger.connections import AsyncConnection, SyncConnection, run, run_async


@dataclass(frozen=True, slots=True)
class NewEntry:
    """An entry about to be written: who (`key_name`, and `key_id` when a key acted), what
    (`action`), to what (`target`) or how many (`count`), and where from."""

    key_id: str | None
    key_name: str
    action: str
    target: str | None = None
    count: int | None = None
    request_id: str | None = None
    client_address: str | None = None
    detail: Mapping[str, Any] | None = None

    def params(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "key_name": self.key_name,
            "action": self.action,
            "target": self.target,
            "count": self.count,
            "request_id": self.request_id,
            "client_address": self.client_address,
            "detail": None if self.detail is None else orjson.dumps(self.detail).decode(),
        }


@dataclass(frozen=True, slots=True)
class Entry:
    """An entry as the log holds it."""

    id: int
    at: datetime
    key_id: str | None
    key_name: str
    action: str
    target: str | None
    count: int | None
    request_id: str | None
    client_address: str | None
    detail: dict[str, Any] | None


def insert(conn: SyncConnection, entry: NewEntry) -> int:
    """Write an entry in the caller's transaction; its id."""
    return int(run(conn, queries.INSERT_AUDIT_ENTRY, entry.params()).rows[0][0])


async def insert_async(conn: AsyncConnection, entry: NewEntry) -> int:
    return int((await run_async(conn, queries.INSERT_AUDIT_ENTRY, entry.params())).rows[0][0])


async def page_async(
    conn: AsyncConnection,
    *,
    action: str | None = None,
    key_name: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[Entry]:
    """Up to `limit` entries newest first, older than the entry `before` when given."""
    params = {"action": action, "key_name": key_name, "before": before, "limit": limit}
    rows = (await run_async(conn, queries.AUDIT_PAGE, params)).rows
    return [_entry(row) for row in rows]


def _entry(row: tuple[Any, ...]) -> Entry:
    entry_id, at, key_id, key_name, action, target, count, request_id, address, detail = row
    return Entry(
        entry_id,
        at,
        key_id,
        key_name,
        action,
        target,
        count,
        request_id,
        address,
        None if detail is None else orjson.loads(detail),
    )


def prune(conn: SyncConnection, retain_seconds: float, limit: int) -> int:
    """Delete up to `limit` entries older than `retain_seconds`; how many went."""
    return run(conn, queries.PRUNE_AUDIT_LOG, {"retain": retain_seconds, "limit": limit}).rowcount


def count_prunable(conn: SyncConnection, retain_seconds: float) -> int:
    return int(run(conn, queries.COUNT_PRUNABLE_AUDIT, {"retain": retain_seconds}).rows[0][0])
