"""I9, from outside: real api, relay and worker processes run workflows. A step starts only after
every step it comes after has succeeded, and exactly once, whichever of them finished last, also
when a worker running its upstream steps is SIGKILLed."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import psycopg

from tests.support.infra import Infra
from tests.support.stack import Stack

ECHO = "app.tasks.example.echo"
SLEEP = "app.tasks.example.sleep"
GATHER = "app.tasks.example.gather"


def declare(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    with stack.client() as client:
        answer = client.post("/api/v1/workflows", json=body)
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def workflow(stack: Stack, workflow_id: str) -> dict[str, Any]:
    with stack.client() as client:
        return dict(client.get(f"/api/v1/workflows/{workflow_id}").json())


def wait_finished(stack: Stack, workflow_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = workflow(stack, workflow_id)
        if view["state"] != "running":
            return view
        time.sleep(0.2)
    raise AssertionError(
        f"workflow still running after {timeout}s: {workflow(stack, workflow_id)}\n{stack.logs()}"
    )


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_a_diamond_runs_its_last_step_once_after_both_middle_steps_with_both_results(stack: Stack) -> None:
    body = declare(
        stack,
        {
            "name": "diamond",
            "steps": {
                "a": {"task": ECHO, "payload": {"message": "a"}},
                "b": {"task": SLEEP, "payload": {"seconds": 0.3}, "after": ["a"]},
                "c": {"task": ECHO, "payload": {"message": "c"}, "after": ["a"]},
                "d": {"task": GATHER, "payload": {}, "after": ["b", "c"]},
            },
        },
    )
    view = wait_finished(stack, body["id"], timeout=60)
    assert view["state"] == "succeeded", view
    jobs = {name: stack.job(job_id) for name, job_id in body["steps"].items()}
    assert jobs["d"]["attempts"] == 1
    assert jobs["d"]["result"] == {"upstream": {"b": {"slept": 0.3}, "c": {"message": "c"}}}
    last_upstream = max(moment(jobs[s]["finished_at"]) for s in ("b", "c"))
    assert moment(jobs["d"]["started_at"]) >= last_upstream, "d starts after both b and c succeeded"
    assert moment(jobs["b"]["started_at"]) >= moment(jobs["a"]["finished_at"])


def test_a_fan_in_of_fifty_steps_runs_its_gather_step_once_though_a_worker_is_killed_mid_way(
    stack: Stack, clean_ledger: Infra
) -> None:
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        first = [row[0] for row in conn.execute("SELECT id FROM workers WHERE stopped_at IS NULL")]
    assert first, "the stack's worker has beaten its heart"
    second = stack.start_worker("worker2", threads=8)
    steps: dict[str, Any] = {f"s{i:02}": {"task": SLEEP, "payload": {"seconds": 0.5}} for i in range(50)}
    steps["gather"] = {"task": GATHER, "payload": {}, "after": sorted(steps)}
    body = declare(stack, {"name": "fan-in", "steps": steps})

    def running() -> int:
        with psycopg.connect(clean_ledger.libpq_url) as conn:
            found = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'running' AND worker_id = ANY(%s)),"
                " count(*) FILTER (WHERE state = 'succeeded') FROM jobs WHERE workflow_id = %s",
                (first, body["id"]),
            ).fetchone()
        assert found is not None
        return int(found[0]) if found[1] < 40 else -1

    deadline = time.monotonic() + 60
    while (mid_job := running()) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mid_job > 0, "the first worker was running steps when it was killed"
    stack.processes["worker"].kill()

    view = wait_finished(stack, body["id"], timeout=120)
    assert view["state"] == "succeeded", view
    gather = stack.job(body["steps"]["gather"])
    assert gather["attempts"] == 1, "the fan-in ran once"
    assert gather["run"] == 1
    assert set(gather["result"]["upstream"]) == {f"s{i:02}" for i in range(50)}
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        attempts = conn.execute(
            "SELECT count(*) FROM job_attempts WHERE job_id = %s", (body["steps"]["gather"],)
        ).fetchone()
        lost = conn.execute(
            "SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id"
            " WHERE j.workflow_id = %s AND a.outcome = 'lost'",
            (body["id"],),
        ).fetchone()
    assert attempts == (1,)
    assert lost is not None
    assert lost[0] >= 1, "the killed worker's steps were handed to the other"
    assert second.alive()
