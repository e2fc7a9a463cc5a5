"""How routes reach the ledger: connections opened inside the route, after FastAPI validated
the request, so a bad path or query is a 422 whatever state the database is in.

A dependency that opened the connection would run before validation, and a database that
is down would turn every bad request into a 503.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.ledger.engines import async_engine


@asynccontextmanager
async def reading() -> AsyncIterator[AsyncConnection]:
    """A connection for reads (no transaction kept open between statements)."""
    async with async_engine().connect() as conn:
        yield conn


@asynccontextmanager
async def transaction() -> AsyncIterator[AsyncConnection]:
    """A transaction that commits when the block ends: before the response is sent, so a
    client never hears of a change the database then refused."""
    async with async_engine().begin() as conn:
        yield conn


async def _session() -> AsyncIterator[AsyncSession]:
    async with AsyncSession(async_engine(), expire_on_commit=False) as session:
        yield session  # what the route did not commit rolls back here


# A SQLAlchemy session for a route's own writes (and its jobs: `task.enqueue(..., session=…)`);
# scope="function" closes it before the response is sent.
SessionDep = Annotated[AsyncSession, Depends(_session, scope="function")]
