"""Following jobs over HTTP: the wait of GET /api/v1/jobs/{id}?wait_seconds=N, and the SSE stream
of GET /api/v1/events (served by a real `conveyor api` process; the jobs are run in this process
the way a worker runs them)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

import app.tasks  # noqa: F401  (the jobs run in this process need their tasks)
from tests.support import running
from tests.support.infra import Infra
from tests.support.keys import full_key, make_key
from tests.support.sse import events
from tests.support.stack import Stack

pytestmark = pytest.mark.anyio
ECHO = "app.tasks.example.echo"
FLAKY = "app.tasks.example.flaky"


def event_at(infra: Infra, job_id: str, state: str) -> float:
    """When the job's event of `state` was written (the database's clock, as epoch seconds)."""
    with psycopg.connect(infra.libpq_url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM at) FROM job_events WHERE job_id = %s AND state = %s", (job_id, state)
        ).fetchone()
    assert row is not None, f"no {state} event for {job_id}"
    return float(row[0])


async def post(api: httpx.AsyncClient, task: str = ECHO, **headers: str) -> str:
    payload = {"message": "hi"} if task == ECHO else {"fail_times": 0}
    response = await api.post("/api/v1/jobs", json={"task": task, "payload": payload}, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


# -- wait ---------------------------------------------------------------------------------------


async def test_a_wait_answers_when_the_job_finishes_not_later(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    job_id = await post(api)
    waiting = asyncio.create_task(api.get(f"/api/v1/jobs/{job_id}", params={"wait_seconds": 30}))
    await asyncio.sleep(0.5)
    assert not waiting.done(), "it waits while the job is queued"
    await asyncio.to_thread(running.run, clean_ledger, job_id, ECHO)
    response = await waiting
    answered = time.time()
    assert response.status_code == 200
    assert response.json()["state"] == "succeeded"
    assert response.json()["result"] == {"message": "hi"}
    late = answered - event_at(clean_ledger, job_id, "succeeded")
    assert late < 0.1, f"answered {late * 1000:.0f} ms after the job finished"


async def test_a_wait_answers_at_its_time_limit_when_nothing_happens(api: httpx.AsyncClient) -> None:
    job_id = await post(api)
    started = time.monotonic()
    response = await api.get(f"/api/v1/jobs/{job_id}", params={"wait_seconds": 0.5})
    took = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["state"] == "queued"
    assert 0.5 <= took < 5.0


async def test_a_wait_on_a_finished_job_answers_at_once(api: httpx.AsyncClient, clean_ledger: Infra) -> None:
    job_id = await post(api)
    await asyncio.to_thread(running.run, clean_ledger, job_id, ECHO)
    started = time.monotonic()
    response = await api.get(f"/api/v1/jobs/{job_id}", params={"wait_seconds": 30})
    assert response.json()["state"] == "succeeded"
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize("seconds", ["-1", "61", "soon"])
async def test_a_wait_outside_zero_to_sixty_seconds_is_refused(api: httpx.AsyncClient, seconds: str) -> None:
    job_id = await post(api)
    response = await api.get(f"/api/v1/jobs/{job_id}", params={"wait_seconds": seconds})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "wait_seconds"]


async def test_a_wait_sees_only_what_the_key_may_read(api: httpx.AsyncClient) -> None:
    theirs = await post(api)
    mine_key = make_key(["enqueue"])
    mine = await post(api, authorization=f"Bearer {mine_key}")
    own = {"authorization": f"Bearer {mine_key}"}
    refused = await api.get(f"/api/v1/jobs/{theirs}", params={"wait_seconds": 5}, headers=own)
    assert refused.status_code == 404
    answered = await api.get(f"/api/v1/jobs/{mine}", params={"wait_seconds": 0.2}, headers=own)
    assert answered.status_code == 200


async def test_two_hundred_waiters_leave_a_plain_read_quick_and_are_all_answered(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    ids = [await post(api) for _ in range(20)]
    alone = await plain_read_seconds(api, ids[0])
    waiters = []
    for _ in range(10):  # clients arrive twenty at a time
        waiters += [
            asyncio.create_task(api.get(f"/api/v1/jobs/{job_id}", params={"wait_seconds": 60}))
            for job_id in ids
        ]
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    beside = await plain_read_seconds(api, ids[0])
    # The machine is shared: against the same read without waiters, and never past a second.
    assert beside < min(1.0, 3 * alone + 0.1), (
        f"a plain GET took {beside:.3f} s beside 200 waiters, {alone:.3f} alone"
    )
    assert not any(w.done() for w in waiters)
    for job_id in ids:
        await asyncio.to_thread(running.run, clean_ledger, job_id, ECHO)
    answers = await asyncio.wait_for(asyncio.gather(*waiters), 30)
    assert {a.status_code for a in answers} == {200}, {a.text for a in answers if a.status_code != 200}
    assert {a.json()["state"] for a in answers} == {"succeeded"}


async def plain_read_seconds(api: httpx.AsyncClient, job_id: str) -> float:
    """The median of three plain GETs of a job."""
    took = []
    for _ in range(3):
        started = time.monotonic()
        response = await api.get(f"/api/v1/jobs/{job_id}")
        took.append(time.monotonic() - started)
        assert response.status_code == 200
    return sorted(took)[1]


# -- the stream ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_process(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A `conveyor api` process on this run's database (no relay, no worker), for the module."""
    stack = Stack(workdir=tmp_path_factory.mktemp("events"), env=dict(os.environ))
    try:
        stack.start_api()
        stack.wait_api()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def served(api_process: Stack, clean_ledger: Infra) -> Stack:
    """The module's API process, with an empty ledger for the test."""
    api_process.wait_api()
    return api_process


def post_sync(stack: Stack, key: str | None = None, task: str = ECHO) -> str:
    payload: dict[str, Any] = {"message": "hi"} if task == ECHO else {"fail_times": 0}
    with stack.client(key) as client:
        response = client.post("/api/v1/jobs", json={"task": task, "payload": payload})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_the_stream_tells_each_change_with_the_job_as_it_is(served: Stack, clean_ledger: Infra) -> None:
    with events(served.base_url, full_key()) as stream:
        job_id = post_sync(served)
        running.run(clean_ledger, job_id, ECHO)
        told = stream.take(3)
    assert [(e.event, e.data["id"], e.data["state"], e.data["attempts"]) for e in told] == [
        ("queued", job_id, "queued", 0),
        ("running", job_id, "running", 1),
        ("succeeded", job_id, "succeeded", 1),
    ]
    assert told[-1].data["result"] == {"message": "hi"}
    assert told[0].data["task"] == ECHO
    assert len({e.id for e in told}) == 3


def test_a_stream_resumed_after_an_event_repeats_none_and_misses_none(
    served: Stack, clean_ledger: Infra
) -> None:
    with events(served.base_url, full_key()) as stream:
        first = [post_sync(served) for _ in range(3)]
        told = stream.take(3)
    missed = [post_sync(served) for _ in range(2)]
    for job_id in first:
        running.run(clean_ledger, job_id, ECHO)
    with events(served.base_url, full_key(), headers={"Last-Event-ID": told[1].id}) as resumed:
        again = resumed.take(1 + 2 + 6)
    with events(served.base_url, full_key(), params={"after": told[1].id}) as by_query:
        same = by_query.take(1 + 2 + 6)
    assert [e.data["id"] for e in again[:3]] == [first[2], *missed]
    assert [e.id for e in again] == [e.id for e in same]
    assert again[0].id == told[2].id, "resumed right after the event named"
    kept = told[:2] + again
    assert len({e.id for e in kept}) == len(kept), "nothing repeated"
    assert sorted(e.event for e in again[3:]) == ["running"] * 3 + ["succeeded"] * 3


def test_a_stream_without_a_cursor_starts_from_now(served: Stack) -> None:
    before = post_sync(served)
    with events(served.base_url, full_key()) as stream:
        after = post_sync(served)
        told = stream.take(1)
    assert [e.data["id"] for e in told] == [after]
    assert before != after


def test_an_enqueue_key_follows_its_own_jobs_and_a_read_key_all(served: Stack) -> None:
    mine_key, reader = make_key(["enqueue"]), make_key(["read"])
    with events(served.base_url, mine_key) as own, events(served.base_url, reader) as everything:
        theirs = post_sync(served)
        mine = post_sync(served, mine_key)
        last = post_sync(served)
        seen_by_reader = everything.take(3)
        seen_by_owner = own.take(1)
    assert [e.data["id"] for e in seen_by_reader] == [theirs, mine, last]
    assert [e.data["id"] for e in seen_by_owner] == [mine]


def test_filters_choose_the_task_and_the_job(served: Stack, clean_ledger: Infra) -> None:
    with (
        events(served.base_url, full_key(), params={"task": FLAKY}) as by_task,
        events(served.base_url, full_key(), params={"task": ECHO}) as echoes,
    ):
        echo = post_sync(served)
        flaky = post_sync(served, task=FLAKY)
        by_task_told = by_task.take(1)
        echo_told = echoes.take(1)
        with events(served.base_url, full_key(), params={"job": echo}) as by_job:
            running.run(clean_ledger, flaky, FLAKY)
            running.run(clean_ledger, echo, ECHO)
            by_job_told = by_job.take(2)
    assert [e.data["id"] for e in by_task_told] == [flaky]
    assert [e.data["id"] for e in echo_told] == [echo]
    assert [(e.data["id"], e.event) for e in by_job_told] == [(echo, "running"), (echo, "succeeded")]


def test_a_cursor_older_than_the_kept_events_is_gone_and_a_made_up_one_invalid(
    served: Stack, clean_ledger: Infra
) -> None:
    from app.ledger import retention
    from app.ledger.engines import sync_engine

    with events(served.base_url, full_key()) as stream:
        post_sync(served)
        post_sync(served)
        told = stream.take(2)
    time.sleep(0.3)
    with sync_engine().begin() as conn:
        assert retention.prune_events(conn, 0.1, 1000) == 2
    with served.client() as client:
        gone = client.get("/api/v1/events", headers={"Last-Event-ID": told[0].id})
        invalid = client.get("/api/v1/events", params={"after": "yesterday"})
    assert gone.status_code == 410
    assert "EVENT_RETENTION_SECONDS" in gone.json()["detail"]
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["query", "after"]


def test_a_stream_from_0_0_starts_at_the_oldest_event_kept_after_a_pruning(
    served: Stack, clean_ledger: Infra
) -> None:
    """`0-0` names no event, so it is never gone: it means everything the log still keeps."""
    pruned = [post_sync(served) for _ in range(2)]
    kept = [post_sync(served) for _ in range(2)]
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:  # the log's first two
        conn.execute("DELETE FROM job_events WHERE job_id = ANY(%s::uuid[])", (pruned,))
    with events(served.base_url, full_key(), params={"after": "0-0"}) as by_query:
        told = by_query.take(2)
    with events(served.base_url, full_key(), headers={"Last-Event-ID": "0-0"}) as by_header:
        same = by_header.take(2)
    assert [e.data["id"] for e in told] == kept
    assert [e.id for e in same] == [e.id for e in told]


def test_the_stream_needs_a_key_that_reads(served: Stack) -> None:
    with httpx.Client(base_url=served.base_url) as client:
        assert client.get("/api/v1/events").status_code == 401
        operator = make_key(["operate"])
        refused = client.get("/api/v1/events", headers={"authorization": f"Bearer {operator}"})
        assert refused.status_code == 403
