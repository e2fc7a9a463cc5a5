"""Each state change of the ledger, run against the real PostgreSQL on this run's database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.support.infra import Infra


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def conn(clean_ledger: Infra) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection: each statement is its own transaction, as on the hot paths."""
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
async def aconn(clean_ledger: Infra) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(clean_ledger.libpq_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def look(clean_ledger: Infra) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A second connection that reads rows as dicts: what the statements left behind."""
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection
