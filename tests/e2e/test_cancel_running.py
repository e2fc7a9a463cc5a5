"""Cancelling a running job, driven from outside: real api, relay and worker processes.

A cooperative task stops when it sees the request; one that never looks is interrupted after
CANCEL_GRACE_SECONDS; either way the job ends cancelled after one attempt, is never retried,
and the worker goes on. A cancel racing a job's end leaves one outcome, never both.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.support.faults import purge_queues
from tests.support.infra import Infra
from tests.support.stack import TERMINAL, Stack

SLEEP = "app.tasks.example.sleep"
SPIN = "app.tasks.example.spin"
ECHO = "app.tasks.example.echo"
GRACE = 1.0


@pytest.fixture(scope="module")
def stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs, job_attempts, workers, relays CASCADE")
    purge_queues(infra.broker_url)
    env = dict(os.environ) | {"CANCEL_GRACE_SECONDS": str(GRACE)}
    running = Stack(workdir=Path(tmp_path_factory.mktemp("cancel")), env=env)
    try:
        running.start_all()
        yield running
    finally:
        running.stop()


def wait_running(stack: Stack, job_id: str, timeout: float = 30.0) -> None:
    stack.wait_for([job_id], states={"running"}, timeout=timeout)


def cancel(stack: Stack, job_id: str) -> int:
    with stack.client() as client:
        return client.post(f"/api/v1/jobs/{job_id}/cancel").status_code


def outcomes(stack: Stack, job_id: str) -> list[str | None]:
    with stack.client() as client:
        return [a["outcome"] for a in client.get(f"/api/v1/jobs/{job_id}/attempts").json()]


def assert_the_worker_goes_on(stack: Stack) -> None:
    assert stack.processes["worker"].alive()
    after = stack.post_job(ECHO, {"message": "still here"})
    assert stack.wait_for([after], timeout=15)[after]["state"] == "succeeded"


def assert_cancelled_once(stack: Stack, job_id: str) -> dict[str, Any]:
    time.sleep(0.5)  # a retry, if one were scheduled, would be claimed by now
    job = stack.job(job_id)
    assert (job["state"], job["attempts"], job["result"]) == ("cancelled", 1, None), job
    assert job["finished_at"] is not None
    assert outcomes(stack, job_id) == ["cancelled"]
    return job


def test_a_cooperative_running_job_stops_within_a_second_or_two_and_ends_cancelled(stack: Stack) -> None:
    job_id = stack.post_job(SLEEP, {"seconds": 30})
    wait_running(stack, job_id)
    asked_at = time.monotonic()
    assert cancel(stack, job_id) == 202
    stack.wait_for([job_id], timeout=10)
    took = time.monotonic() - asked_at
    assert took < 2.0, f"stopped {took:.1f}s after the request"
    job = assert_cancelled_once(stack, job_id)
    assert "the task stopped" in job["last_error"]
    assert cancel(stack, job_id) == 409, "a finished job"
    assert_the_worker_goes_on(stack)


def test_a_task_that_never_looks_is_interrupted_after_its_grace_and_ends_cancelled(stack: Stack) -> None:
    job_id = stack.post_job(SPIN, {"seconds": 30})
    wait_running(stack, job_id)
    asked_at = time.monotonic()
    assert cancel(stack, job_id) == 202
    stack.wait_for([job_id], timeout=15)
    took = time.monotonic() - asked_at
    assert GRACE <= took < GRACE + 2.5, f"interrupted {took:.1f}s after the request"
    job = assert_cancelled_once(stack, job_id)
    assert "interrupted" in job["last_error"]
    assert_the_worker_goes_on(stack)


def test_a_queued_job_is_cancelled_at_once_with_a_200(stack: Stack) -> None:
    job_id = stack.post_job(SLEEP, {"seconds": 1}, delay_seconds=60)
    assert cancel(stack, job_id) == 200
    job = stack.job(job_id)
    assert (job["state"], job["attempts"]) == ("cancelled", 0)


def test_a_cancel_racing_the_end_of_a_job_leaves_one_outcome_never_both(stack: Stack, infra: Infra) -> None:
    rng = random.Random(8)

    def race(job_id: str, window: float) -> int:
        if stack.wait_for([job_id], states={"running", *TERMINAL}, timeout=30)[job_id]["state"] == "running":
            time.sleep(rng.uniform(0, window))
        return cancel(stack, job_id)

    # Cooperative jobs that end on their own within half a second, and jobs that never look,
    # whose interruption after the grace lands close to their own end; each raced as soon as
    # it is posted.
    kinds = [(SLEEP, {"seconds": 0.4}, 0.6)] * 16 + [(SPIN, {"seconds": GRACE + 0.2}, 0.4)] * 6
    rng.shuffle(kinds)
    with ThreadPoolExecutor(8) as pool:
        ids, raced = [], []
        for task, payload, window in kinds:
            ids.append(stack.post_job(task, payload))
            raced.append(pool.submit(race, ids[-1], window))
        answers = [future.result() for future in raced]
    stack.wait_for(ids, timeout=60)
    time.sleep(0.5)
    # 200: a claim made ahead showed the job running, went back before a thread took it, and the
    # request found it queued.
    assert set(answers) <= {200, 202, 409}

    with psycopg.connect(infra.libpq_url, row_factory=dict_row) as conn:
        rows = conn.execute(
            """
            SELECT j.id::text AS id, j.state, j.attempts, j.result IS NOT NULL AS has_result,
                   coalesce(array_agg(a.outcome ORDER BY a.attempt)
                            FILTER (WHERE a.job_id IS NOT NULL), '{}') AS outcomes
            FROM jobs j LEFT JOIN job_attempts a ON a.job_id = j.id
            WHERE j.id = ANY(%s::uuid[]) GROUP BY j.id
            """,
            (ids,),
        ).fetchall()
    assert len(rows) == len(ids)
    print(f"\nraced {len(ids)} jobs: {Counter(r['state'] for r in rows)}, answers {Counter(answers)}")

    def end_of(job_id: str) -> tuple[str, int, bool, tuple[str, ...]]:
        r = next(r for r in rows if r["id"] == job_id)
        return (r["state"], r["attempts"], r["has_result"], tuple(r["outcomes"]))

    ends = {end_of(r["id"]) for r in rows}
    # A claim made ahead of a free thread shows the job running; cancelled before a thread took
    # it, its claim is undone and it ends cancelled without an attempt: it never started.
    never_started = ("cancelled", 0, False, ())
    assert ends <= {
        ("succeeded", 1, True, ("succeeded",)),
        ("cancelled", 1, False, ("cancelled",)),
        never_started,
    }
    for job_id, answer in zip(ids, answers, strict=True):
        if answer == 409:  # it had finished before the request: untouched by it
            assert next(r for r in rows if r["id"] == job_id)["state"] == "succeeded"
        if answer == 200:  # it had not started: cancelled at once, never run
            assert end_of(job_id) == never_started
    assert_the_worker_goes_on(stack)
