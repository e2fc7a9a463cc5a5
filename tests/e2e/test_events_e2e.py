"""I10 every change is told once: a thousand jobs through the real api, relay and worker, followed
by a stream that is dropped mid-way and resumed with Last-Event-ID."""

from __future__ import annotations

from collections import defaultdict

from tests.support.keys import full_key
from tests.support.sse import Sse, events
from tests.support.stack import Stack

ECHO = "app.tasks.example.echo"
JOBS = 1000


def test_a_stream_dropped_and_resumed_across_a_thousand_jobs_misses_nothing_and_repeats_nothing(
    stack: Stack,
) -> None:
    with events(stack.base_url, full_key()) as stream:
        with stack.client() as client:
            body = {"jobs": [{"task": ECHO, "payload": {"message": str(i)}} for i in range(JOBS)]}
            response = client.post("/api/v1/jobs/batch", json=body, timeout=60)
        assert response.status_code == 202, response.text
        ids = {job["id"] for job in response.json()["jobs"]}
        before_the_drop = stream.take(JOBS)  # about a third of what is coming
    finished = {e.data["id"] for e in before_the_drop if e.event == "succeeded"}

    def all_finished(taken: list[Sse]) -> bool:
        if taken[-1].event == "succeeded":
            finished.add(taken[-1].data["id"])
        return finished >= ids

    with events(stack.base_url, full_key(), headers={"Last-Event-ID": before_the_drop[-1].id}) as resumed:
        after_the_drop = resumed.take(until=all_finished)

    told = before_the_drop + after_the_drop
    assert len({e.id for e in told}) == len(told), "no event told twice"
    by_job: dict[str, list[str]] = defaultdict(list)
    for event in told:
        by_job[event.data["id"]].append(event.event)
    assert set(by_job) == ids
    wrong = {job: states for job, states in by_job.items() if states != ["queued", "running", "succeeded"]}
    assert wrong == {}, f"{len(wrong)} jobs were told otherwise, e.g. {next(iter(wrong.items()))}"
