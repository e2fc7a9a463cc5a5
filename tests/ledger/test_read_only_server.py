"""A write that reaches a server refusing writes (a standby: a primary demoted by a failover, or a
host list without `target_session_attrs`) reads as a lost connection, which every caller
already rides out: the connection is dropped and an OperationalError raised, never the
refusal itself (which the API answered as a 500, and which left a pooled connection on the
standby for good). A session with `default_transaction_read_only` refuses writes exactly as a
standby does (SQLSTATE 25006), so the shared PostgreSQL stands in for one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import Engine, create_engine

from app.ledger import flow
from app.ledger import jobs as ledger
from app.ledger.jobs import Doorbell, NewJob
from tests.support.infra import Infra

READ_ONLY = "-c default_transaction_read_only=on"
ECHO = "app.tasks.example.echo"


def new_job() -> NewJob:
    return NewJob(task=ECHO, queue="default", payload_json="{}", max_attempts=3)


@pytest.fixture
def read_only(clean_ledger: Infra) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True, options=READ_ONLY) as conn:
        yield conn


@pytest.fixture
def read_only_engine(clean_ledger: Infra) -> Iterator[Engine]:
    engine = create_engine(clean_ledger.database_url, connect_args={"options": READ_ONLY}, pool_size=1)
    yield engine
    engine.dispose()


def test_a_write_refused_as_read_only_closes_the_connection_and_raises_operational_error(
    read_only: psycopg.Connection[Any],
) -> None:
    with pytest.raises(psycopg.OperationalError, match="read-only"):
        ledger.insert(read_only, [new_job()])
    assert read_only.closed


def test_a_limited_claim_refused_as_read_only_does_the_same(read_only: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.OperationalError, match="read-only"):
        flow.claim_limited(read_only, "w1", 30.0, [Doorbell(uuid4(), ECHO)])
    assert read_only.closed


@pytest.mark.anyio
async def test_an_async_write_refused_as_read_only_does_the_same(clean_ledger: Infra) -> None:
    async with await psycopg.AsyncConnection.connect(
        clean_ledger.libpq_url, autocommit=True, options=READ_ONLY
    ) as conn:
        with pytest.raises(psycopg.OperationalError, match="read-only"):
            await ledger.insert_async(conn, [new_job()])
        assert conn.closed


def test_a_pooled_connection_refused_as_read_only_is_dropped_and_reads_as_an_outage(
    read_only_engine: Engine,
) -> None:
    with read_only_engine.connect() as conn:
        first = conn.connection.dbapi_connection
    lent: list[object] = []

    def insert() -> None:
        with read_only_engine.begin() as conn:
            lent.append(conn.connection.dbapi_connection)
            ledger.insert(conn, [new_job()])

    with pytest.raises(sqlalchemy.exc.OperationalError, match="read-only") as raised:
        insert()
    assert lent == [first], "the pool lent the connection it had"
    assert raised.value.connection_invalidated
    assert first is not None
    assert first.closed
    with read_only_engine.connect() as conn:
        assert conn.connection.dbapi_connection is not first
