"""Dependencies of the routes, as Annotated aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncConnection

from app.ledger.engines import async_engine


async def _transaction() -> AsyncIterator[AsyncConnection]:
    async with async_engine().begin() as conn:
        yield conn


async def _read_only() -> AsyncIterator[AsyncConnection]:
    async with async_engine().connect() as conn:
        yield conn


# scope="function": the transaction commits before the response is sent, so a client never
# hears of a change the database then refused.
TxDep = Annotated[AsyncConnection, Depends(_transaction, scope="function")]
ReadDep = Annotated[AsyncConnection, Depends(_read_only)]
