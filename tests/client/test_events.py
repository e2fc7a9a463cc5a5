"""The event stream through the client, against a live API: a job's states in order, and none
missed nor repeated across a connection the test drops (through a proxy it cuts)."""

from __future__ import annotations

from collections import defaultdict

import pytest
from conveyor_client import AsyncClient, Client

from tests.support.keys import full_key
from tests.support.proxy import TcpProxy
from tests.support.stack import Stack

# A stream that missed an event would wait for it forever: these fail after two minutes instead.
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("events_served"), pytest.mark.timeout(120)]

ECHO = "app.tasks.example.echo"
# Long enough to be connected to the stream before the job starts, on a loaded machine.
DELAY = 3


def test_events_yield_the_states_of_a_job_as_it_runs(client: Client) -> None:
    job = client.enqueue(ECHO, {"message": "watched"}, delay_seconds=DELAY)
    states: list[str] = []
    ids: list[str] = []
    for event in client.events(job=job.id):
        assert event.job.id == job.id
        states.append(event.state)
        ids.append(event.id)
        if event.job.finished:
            break
    assert states[-1] == "succeeded"
    assert "running" in states
    assert states.index("running") < states.index("succeeded")
    assert len(set(ids)) == len(ids)
    assert event.job.result == {"message": "watched"}


def test_events_after_0_0_start_from_the_oldest_event_kept(client: Client) -> None:
    job = client.enqueue(ECHO, {"message": "from the start"}, delay_seconds=DELAY)
    first = next(event for event in client.events(after="0-0", job=job.id))
    assert (first.job.id, first.state) == (job.id, "queued")


def test_events_resume_after_a_dropped_connection_missing_none_and_repeating_none(live: Stack) -> None:
    with (
        TcpProxy(("127.0.0.1", live.port)) as proxy,
        Client(f"http://127.0.0.1:{proxy.port}", key=full_key()) as client,
        Client(live.base_url, key=full_key()) as direct,
    ):
        first = client.enqueue(ECHO, {"message": "before the cut"}, delay_seconds=DELAY)
        wanted: set[str] = set()
        seen: dict[str, list[str]] = defaultdict(list)
        ids: list[str] = []
        for event in client.events(task=ECHO):
            ids.append(event.id)
            seen[event.job.id].append(event.state)
            if event.job.id == first.id and not wanted:
                # The stream goes down; the jobs it follows are enqueued and run while it is down,
                # so none of their events can have reached the client before the cut.
                proxy.cut()
                jobs = direct.enqueue_many(ECHO, [{"message": str(i)} for i in range(3)])
                wanted = {job.id for job in jobs}
                live.wait_for(wanted)
                proxy.restore()
            if wanted and all(seen[j] and seen[j][-1] == "succeeded" for j in wanted):
                break
        assert proxy.connections_made >= 2
    assert len(set(ids)) == len(ids), ids
    for job_id in wanted:
        assert seen[job_id][0] == "queued", seen
        assert "running" in seen[job_id], seen
        assert seen[job_id][-1] == "succeeded", seen


@pytest.mark.anyio
async def test_the_async_client_yields_the_same_events(live: Stack) -> None:
    async with AsyncClient(live.base_url, key=full_key()) as client:
        job = await client.enqueue(ECHO, {"message": "async watched"}, delay_seconds=DELAY)
        states = []
        async for event in client.events(job=job.id):
            states.append(event.state)
            if event.job.finished:
                break
    assert states[-1] == "succeeded"
    assert "running" in states
