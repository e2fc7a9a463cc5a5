"""The asyncio client against a live API: the same surface as the blocking one, awaited."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from conveyor_client import AsyncClient, AsyncJob, AuthError, NotFound, ValidationFailed

from tests.support.keys import full_key
from tests.support.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ECHO = "app.tasks.example.echo"
SLEEP = "app.tasks.example.sleep"


async def test_enqueue_then_wait_returns_the_succeeded_job_with_its_result(live: Stack) -> None:
    async with AsyncClient(live.base_url, key=full_key()) as client:
        job = await client.enqueue(ECHO, {"message": "async hello"})
        assert isinstance(job, AsyncJob)
        assert job.state == "queued"
        assert await job.wait(timeout=60) is job
        assert (job.state, job.result) == ("succeeded", {"message": "async hello"})
        assert (await client.get(job.id)).result == {"message": "async hello"}


async def test_jobs_are_waited_for_side_by_side(live: Stack) -> None:
    async with AsyncClient(live.base_url, key=full_key()) as client:
        jobs = await client.enqueue_many(ECHO, [{"message": str(i)} for i in range(4)])
        done = await asyncio.gather(*(job.wait(timeout=60) for job in jobs))
        assert [job.result for job in done] == [{"message": str(i)} for i in range(4)]


async def test_wait_raises_timeout_error_when_time_is_up(live: Stack) -> None:
    async with AsyncClient(live.base_url, key=full_key()) as client:
        job = await client.enqueue(SLEEP, {"seconds": 60})
        with pytest.raises(TimeoutError):
            await job.wait(timeout=1.5)
        assert (await client.cancel(job.id)).id == job.id


async def test_refusals_raise_the_same_errors_as_the_blocking_client(live: Stack) -> None:
    async with AsyncClient(live.base_url, key=full_key()) as client:
        with pytest.raises(ValidationFailed) as invalid:
            await client.enqueue(ECHO, {"message": 5})
        with pytest.raises(NotFound) as missing:
            await client.get(str(uuid.uuid4()))
    async with AsyncClient(live.base_url, key="cvk_unknown_nonsense") as stranger:
        with pytest.raises(AuthError) as unknown:
            await stranger.get(str(uuid.uuid4()))
    assert (invalid.value.status, missing.value.status, unknown.value.status) == (422, 404, 401)


async def test_a_repeated_idempotency_key_is_said_replayed_for_a_job_and_a_batch(live: Stack) -> None:
    key = uuid.uuid4().hex
    async with AsyncClient(live.base_url, key=full_key()) as client:
        first = await client.enqueue(ECHO, {"message": "async once"}, idempotency_key=key)
        again = await client.enqueue(ECHO, {"message": "async once"}, idempotency_key=key)
        payloads = [{"message": f"async batch {i}"} for i in range(2)]
        batch = await client.enqueue_many(ECHO, payloads, idempotency_key=f"{key}-batch")
        batch_again = await client.enqueue_many(ECHO, payloads, idempotency_key=f"{key}-batch")
    assert (again.id, first.replayed, again.replayed) == (first.id, False, True)
    assert [job.id for job in batch_again] == [job.id for job in batch]
    assert [job.replayed for job in batch + batch_again] == [False, False, True, True]
