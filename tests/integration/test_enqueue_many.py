"""`task.enqueue_many` from your own code: one INSERT in your transaction, all or nothing, in order."""

from __future__ import annotations

import asyncio

import psycopg
import pydantic
import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from app.errors import IdempotencyConflict, UnstorableInput
from app.tasks.example import EchoPayload, echo
from tests.integration.conftest import count_jobs
from tests.support.infra import Infra


def messages(count: int, prefix: str = "m") -> list[dict[str, str]]:
    return [{"message": f"{prefix}{i}"} for i in range(count)]


def stored_messages(infra: Infra) -> dict[str, str]:
    with psycopg.connect(infra.libpq_url) as conn:
        rows = conn.execute("SELECT id, payload->>'message' FROM jobs").fetchall()
    return {str(job_id): message for job_id, message in rows}


def test_jobs_enqueued_in_a_committed_session_are_stored_in_order_with_the_options(
    clean_ledger: Infra,
) -> None:
    engine = create_engine(clean_ledger.database_url)
    try:
        with Session(engine) as session:
            payloads = [EchoPayload(message="model"), *messages(2)]
            accepted = echo.enqueue_many_sync(payloads, session=session, priority=4, delay_seconds=30)
            session.commit()
    finally:
        engine.dispose()
    stored = stored_messages(clean_ledger)
    assert [stored[str(job.id)] for job in accepted] == ["model", "m0", "m1"]
    assert all(job.state == "queued" and not job.duplicate for job in accepted)
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        row = conn.execute(
            "SELECT min(priority), max(priority), min(available_at - created_at) FROM jobs"
        ).fetchone()
    assert row is not None
    assert row[0] == row[1] == 4
    assert row[2].total_seconds() >= 29


def test_jobs_enqueued_in_a_rolled_back_transaction_never_existed(clean_ledger: Infra) -> None:
    engine = create_engine(clean_ledger.database_url)
    try:
        with Session(engine) as session:
            echo.enqueue_many_sync(messages(50), session=session)
            session.rollback()
        with engine.connect() as conn:
            echo.enqueue_many_sync(messages(50), session=conn)
            conn.rollback()
    finally:
        engine.dispose()
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        echo.enqueue_many_sync(messages(50), session=conn)
        conn.rollback()
    assert count_jobs(clean_ledger) == 0


def test_async_jobs_exist_if_and_only_if_the_session_commits(clean_ledger: Infra) -> None:
    async def enqueue_twice() -> list[str]:
        engine = create_async_engine(clean_ledger.database_url)
        try:
            async with AsyncSession(engine) as session:
                await echo.enqueue_many(messages(20, "dropped"), session=session)
                await session.rollback()
            async with AsyncSession(engine) as session:
                kept = await echo.enqueue_many(messages(20, "kept"), session=session)
                await session.commit()
            async with engine.connect() as conn:
                await echo.enqueue_many(messages(5, "dropped"), session=conn)
                await conn.rollback()
        finally:
            await engine.dispose()
        async with await psycopg.AsyncConnection.connect(clean_ledger.libpq_url) as conn:
            await echo.enqueue_many(messages(5, "dropped"), session=conn)
            await conn.rollback()
        return [str(job.id) for job in kept]

    kept = asyncio.run(enqueue_twice())
    stored = stored_messages(clean_ledger)
    assert set(stored) == set(kept)
    assert [stored[job_id] for job_id in kept] == [f"kept{i}" for i in range(20)]


def test_without_a_session_the_batch_commits_alone(clean_ledger: Infra) -> None:
    accepted = echo.enqueue_many_sync(messages(3))
    assert set(stored_messages(clean_ledger)) == {str(job.id) for job in accepted}
    more = asyncio.run(echo.enqueue_many(messages(2)))
    assert count_jobs(clean_ledger) == 5
    assert len(more) == 2


def test_an_invalid_payload_refuses_the_batch_naming_its_index(clean_ledger: Infra) -> None:
    payloads: list[dict[str, object]] = [*messages(3), {"message": 5}, {"message": "x", "extra": 1}]
    with pytest.raises(pydantic.ValidationError) as raised:
        echo.enqueue_many_sync(payloads)
    assert [error["loc"] for error in raised.value.errors()] == [(3, "message"), (4, "extra")]
    with pytest.raises(UnstorableInput) as unstorable:
        echo.enqueue_many_sync([*messages(2), {"message": "a\u0000b"}])
    assert unstorable.value.loc == (2, "message")
    assert count_jobs(clean_ledger) == 0


def test_an_idempotency_key_covers_the_whole_batch(clean_ledger: Infra) -> None:
    first = echo.enqueue_many_sync(messages(3), idempotency_key="import-7")
    again = echo.enqueue_many_sync(messages(3), idempotency_key="import-7")
    assert [job.id for job in again] == [job.id for job in first]
    assert all(job.duplicate for job in again)
    assert not any(job.duplicate for job in first)
    assert count_jobs(clean_ledger) == 3
    with pytest.raises(IdempotencyConflict):
        echo.enqueue_many_sync(messages(3, "other"), idempotency_key="import-7")
    with pytest.raises(IdempotencyConflict):
        echo.enqueue_many_sync(messages(3), idempotency_key="import-7", priority=1)
    assert count_jobs(clean_ledger) == 3


def test_a_batch_whose_key_window_has_passed_is_stored_anew(
    clean_ledger: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.settings import get_settings

    first = echo.enqueue_many_sync(messages(2), idempotency_key="old")
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        conn.execute("UPDATE jobs SET created_at = now() - interval '2 days'")
    monkeypatch.setenv("IDEMPOTENCY_KEY_TTL_SECONDS", "86400")
    get_settings.cache_clear()
    try:
        again = echo.enqueue_many_sync(messages(2), idempotency_key="old")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert {job.id for job in again}.isdisjoint(job.id for job in first)
    assert not any(job.duplicate for job in again)
    assert count_jobs(clean_ledger) == 4
