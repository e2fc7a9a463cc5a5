"""Running a statement of `queries.sql` on whichever connection the caller holds.

The hot paths hand in psycopg connections of their own pools (prepared statements, no
layer in between); everything else may hand in a SQLAlchemy connection, whose
`exec_driver_sql` passes the statement and its `%(name)s` parameters to the same psycopg
driver unchanged. Either way the statement runs in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import psycopg
from sqlalchemy import Connection as SyncSaConnection

if TYPE_CHECKING:  # the async layer pulls in sqlalchemy.orm: only processes that use it load it
    from sqlalchemy.ext.asyncio import AsyncConnection as AsyncSaConnection

SyncConnection: TypeAlias = "psycopg.Connection[Any] | SyncSaConnection"
AsyncConnection: TypeAlias = "psycopg.AsyncConnection[Any] | AsyncSaConnection"
Params: TypeAlias = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    rows: list[tuple[Any, ...]]
    rowcount: int


def own_connection(conninfo: str, application_name: str | None = None) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection a process keeps for one hot path (or a LISTEN): autocommit, so each
    statement is its own transaction unless the caller opens one, and a connect bounded in time."""
    named: dict[str, Any] = {"application_name": application_name} if application_name else {}
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=5, **named)


def run(
    conn: SyncConnection, sql: str, params: Params | None = None, *, prepare: bool | None = None
) -> Outcome:
    if isinstance(conn, psycopg.Connection):
        try:
            cursor = conn.execute(sql, params, prepare=prepare)
        except psycopg.errors.ReadOnlySqlTransaction as error:
            conn.close()
            raise on_a_standby(error) from error
        return Outcome(cursor.fetchall() if _has_rows(cursor) else [], cursor.rowcount)
    result = conn.exec_driver_sql(sql, dict(params or {}))
    rows = [tuple(row) for row in result.fetchall()] if result.returns_rows else []
    return Outcome(rows, result.rowcount)


async def run_async(
    conn: AsyncConnection, sql: str, params: Params | None = None, *, prepare: bool | None = None
) -> Outcome:
    if isinstance(conn, psycopg.AsyncConnection):
        try:
            cursor = await conn.execute(sql, params, prepare=prepare)
        except psycopg.errors.ReadOnlySqlTransaction as error:
            await conn.close()
            raise on_a_standby(error) from error
        return Outcome(await cursor.fetchall() if _has_rows(cursor) else [], cursor.rowcount)
    result = await conn.exec_driver_sql(sql, dict(params or {}))
    rows = [tuple(row) for row in result.fetchall()] if result.returns_rows else []
    return Outcome(rows, result.rowcount)


def on_a_standby(error: psycopg.Error) -> psycopg.OperationalError:
    """A write refused as read-only, as the lost connection it is: the connection reached a
    standby (a primary demoted by a failover, or a host list without
    `target_session_attrs=read-write`). Closed, it is replaced by one to the primary, and
    every caller that rides out a database outage (retries, a 503) rides this out too."""
    return psycopg.OperationalError(f"the database server is read-only (a standby): {error}")


def _has_rows(cursor: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> bool:
    """Whether the statement returned rows; cheaper than `cursor.description`, which builds
    a Column per field on every call (measurable on the worker's hot path)."""
    result = cursor.pgresult
    return result is not None and result.status == psycopg.pq.ExecStatus.TUPLES_OK
