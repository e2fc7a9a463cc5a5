"""Pooled engines, one per process and URL: sync for the worker, relay and CLI; async for the API.

Both pools ping each connection they lend: after PostgreSQL restarts, the first statement
gets a fresh connection instead of a stale one's error. That costs a round trip per
checkout, so the hot paths (the API's group commit, the worker's claims and successes, the
relay's publishing loop) use psycopg connections of their own instead. The API's connects,
checkouts and statements are bounded in time, so a stalled database answers 503 instead of
holding requests.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import psycopg
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import OperationalError

if TYPE_CHECKING:  # the async layer pulls in sqlalchemy.orm: only the API process loads it
    from sqlalchemy.ext.asyncio import AsyncEngine

from app.ledger.connections import on_a_standby
from app.ledger.urls import connect_options
from app.settings import get_settings

_sync: dict[str, Engine] = {}
_async: dict[str, AsyncEngine] = {}
_autocommit: dict[str, Engine] = {}
# A worker's threads all reach for the engine with their first message: without the lock
# each made a pool of its own, and a hundred threads ran the server out of connections.
_create_lock = threading.Lock()


def sync_engine(url: str | None = None) -> Engine:
    settings = get_settings()
    url = url or settings.database_url
    if url not in _sync:
        with _create_lock:
            if url not in _sync:
                _sync[url] = create_engine(
                    url,
                    pool_size=settings.db_pool_size,
                    max_overflow=settings.db_pool_size,
                    pool_recycle=1800,
                    # After PostgreSQL restarts, a pooled connection is dead: pinged first, it is
                    # replaced, instead of failing a task's transaction or an operator's command.
                    pool_pre_ping=True,
                    connect_args=connect_options(url, settings.db_failover_seconds),
                )
    return _sync[url]


def autocommit_engine(url: str | None = None) -> Engine:
    """The sync pool, for single statements that are transactions of their own (one round trip)."""
    key = url or get_settings().database_url
    if key not in _autocommit:
        engine = sync_engine(url)
        with _create_lock:
            _autocommit.setdefault(key, engine.execution_options(isolation_level="AUTOCOMMIT"))
    return _autocommit[key]


def async_engine(url: str | None = None) -> AsyncEngine:
    from sqlalchemy.ext.asyncio import create_async_engine

    settings = get_settings()
    url = url or settings.database_url
    if url not in _async:
        _async[url] = create_async_engine(
            url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_pool_size,
            pool_recycle=1800,
            pool_pre_ping=True,
            pool_timeout=settings.db_timeout_seconds,
            connect_args=connect_options(url, settings.db_failover_seconds) | api_connect_args(),
        )
    return _async[url]


def api_connect_args() -> dict[str, object]:
    """libpq options of the API's connections: bounded connects and statements."""
    settings = get_settings()
    timeout_ms = int(settings.db_timeout_seconds * 1000)
    return {
        "connect_timeout": max(2, int(settings.db_timeout_seconds)),
        "options": f"-c statement_timeout={timeout_ms}",
        "application_name": "conveyor-api",
    }


def dispose_sync_engines() -> None:
    """Close every pooled sync connection and forget the engines (the URL may change next)."""
    for engine in _sync.values():
        engine.dispose()
    _sync.clear()
    _autocommit.clear()


async def dispose_async_engines() -> None:
    for engine in _async.values():
        await engine.dispose()
    _async.clear()


@event.listens_for(Engine, "handle_error", retval=True)
def _standby_is_a_lost_connection(context: ExceptionContext) -> BaseException | None:
    """Every engine's pool (the async ones wrap one) treats a write refused as read-only as a
    lost connection: the pool drops its connections (a ping would not: a standby answers it)
    and the caller sees an OperationalError, as for any database outage."""
    error = context.original_exception
    if not isinstance(error, psycopg.errors.ReadOnlySqlTransaction):
        return None
    context.is_disconnect = True
    return OperationalError(
        context.statement, context.parameters, on_a_standby(error), connection_invalidated=True
    )
