"""The seed's acceptance against `docker compose up`: healthy services, a job from the API to
Mailpit, retries into the dead-letter queue, three workers, a load test, a broker outage, a
worker restart and a `down`/`up`, all through the published API port and `docker compose exec`.

The tests share one project and run in this order: the destructive ones come last.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import httpx
import pytest

from tests.compose.api import Poster
from tests.compose.engine import in_ci, why_no_engine
from tests.compose.project import FACTS, ONE_SHOT, Stack, declares_healthcheck, default_services

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

if not in_ci() and (reason := why_no_engine()):
    pytest.skip(f"compose tests need a Docker engine: {reason}", allow_module_level=True)

EMAIL_TASK = "app.tasks.example.send_email"
FLAKY_TASK = "app.tasks.example.flaky"
ECHO_TASK = "app.tasks.example.echo"
SLEEP_TASK = "app.tasks.example.sleep"
PROBED = {"api", "worker", "postgres", "rabbitmq"}  # the healthchecks DESIGN.md requires


def worker_events(stack: Stack, job_id: str) -> list[str]:
    return [str(e["event"]) for e in stack.project.logs("worker") if e.get("job_id") == job_id]


def wait_for(what: str, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


def live_workers(stack: Stack) -> int:
    status, body = stack.api.ready()
    return int(body["checks"]["worker"].get("live", 0)) if status == 200 else -1


def test_every_service_is_up_and_every_declared_healthcheck_passes(compose_stack: Stack) -> None:
    services = default_services()
    declared = {name for name, spec in services.items() if declares_healthcheck(spec)}
    assert declared >= PROBED
    containers = compose_stack.project.containers()
    assert {c.service for c in containers} == set(services)
    for container in containers:
        if container.service == ONE_SHOT:
            assert (container.status, container.exit_code) == ("exited", 0), container
            continue
        assert container.status == "running", container
        if container.service in declared:  # the relay too, once compose gives it a healthcheck
            assert container.health == "healthy", container
        assert container.health in (None, "healthy"), container


def test_readiness_passes_every_check_with_one_live_worker(compose_stack: Stack) -> None:
    status, body = compose_stack.api.ready()
    assert status == 200, body
    assert body["status"] == "ok"
    assert {"database", "broker", "worker"} <= set(body["checks"])
    assert all(check["ok"] for check in body["checks"].values()), body
    assert body["checks"]["worker"]["live"] == 1


def test_an_email_posted_to_the_api_is_sent_by_the_worker_and_reaches_mailpit(
    compose_stack: Stack,
) -> None:
    subject = f"compose acceptance {secrets.token_hex(4)}"
    response = compose_stack.api.post(
        "/api/v1/emails", {"to": "ada@example.com", "subject": subject, "body": "Hello from compose"}
    )
    assert response.status_code == 202, response.text
    job_id = str(response.json()["id"])
    assert response.headers["location"] == f"/api/v1/jobs/{job_id}"

    job = compose_stack.api.wait_for([job_id], timeout=60)[job_id]
    assert job["state"] == "succeeded", job
    events = worker_events(compose_stack, job_id)
    assert "job succeeded" in events, events
    mailpit = httpx.get(f"{compose_stack.project.mailpit_url}/api/v1/messages", timeout=10)
    messages = mailpit.json()["messages"]
    sent = [m for m in messages if m["Subject"] == subject]
    assert len(sent) == 1, messages
    assert [to["Address"] for to in sent[0]["To"]] == ["ada@example.com"]


def test_a_job_that_keeps_failing_retries_by_its_policy_then_is_dead_in_the_ledger_and_default_xq(
    compose_stack: Stack,
) -> None:
    dead_letters = compose_stack.queue_depths().get("default.XQ", 0)
    job_id = compose_stack.api.post_job(FLAKY_TASK, {"fail_times": 5})

    job = compose_stack.api.wait_for([job_id], timeout=90)[job_id]
    assert job["state"] == "dead", job
    assert job["attempts"] == job["max_attempts"] == 5, job
    attempts = compose_stack.api.get(f"/api/v1/jobs/{job_id}/attempts").json()
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4, 5]
    events = worker_events(compose_stack, job_id)
    assert sum(event.startswith("job retrying") for event in events) == 4, events
    assert events.count("job dead") == 1, events
    wait_for(
        "the dead job's message in default.XQ",
        lambda: compose_stack.queue_depths().get("default.XQ", 0) == dead_letters + 1,
        timeout=20,
    )


def test_scaling_the_worker_service_to_three_gives_three_live_workers(compose_stack: Stack) -> None:
    compose_stack.project.up("--no-recreate", "--scale", "worker=3", "worker")

    wait_for("three live workers in /health/ready", lambda: live_workers(compose_stack) == 3, timeout=90)
    workers = compose_stack.project.containers("worker")
    assert len(workers) == 3
    assert all(worker.status == "running" for worker in workers), workers


def test_a_short_load_test_in_the_api_container_gets_every_job_to_succeeded(compose_stack: Stack) -> None:
    done = compose_stack.project.exec(
        "api",
        *("conveyor", "loadtest", "--api", "http://127.0.0.1:8000", "--task", ECHO_TASK),
        *("--key", str(compose_stack.api.key)),
        *("--jobs", "500", "--rate", "100", "--timeout", "120"),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    table = dict(re.findall(r"^\s*(accepted|succeeded|dead|lost)\s+(\d+)\s*$", done.stdout, re.MULTILINE))
    assert table == {"accepted": "500", "succeeded": "500", "dead": "0", "lost": "0"}, done.stdout


def test_jobs_posted_while_the_rabbitmq_container_is_stopped_all_succeed_once_it_is_back(
    compose_stack: Stack,
) -> None:
    with Poster(compose_stack.api, ECHO_TASK, {"message": "through an outage"}, interval=0.05) as poster:
        wait_for("the first 202s", lambda: len(poster.accepted) >= 5, timeout=30)
        compose_stack.project.compose("stop", "rabbitmq")
        stopped = time.monotonic()
        time.sleep(5)  # an outage long enough for the relay and the workers to notice
        back = time.monotonic()
        compose_stack.project.compose("start", "rabbitmq")
        wait_for("readiness after the restart", lambda: compose_stack.api.ready()[0] == 200, timeout=120)
    assert poster.refused == []
    assert poster.accepted_between(stopped, back) > 0, "no job was posted while the broker was stopped"

    jobs = compose_stack.api.wait_for(poster.ids, timeout=180)
    assert {job["state"] for job in jobs.values()} == {"succeeded"}
    assert len(jobs) == len(poster.ids)


def test_restarting_the_workers_mid_work_loses_no_job(compose_stack: Stack) -> None:
    job_ids = [compose_stack.api.post_job(SLEEP_TASK, {"seconds": 1.0}) for _ in range(60)]
    wait_for(
        "jobs running",
        lambda: bool(compose_stack.api.get("/api/v1/jobs", state="running", limit=1).json()["items"]),
        timeout=60,
    )
    started = {worker.id: worker.started_at for worker in compose_stack.project.containers("worker")}

    compose_stack.project.compose("restart", "worker")

    restarted = {worker.id: worker.started_at for worker in compose_stack.project.containers("worker")}
    assert restarted.keys() == started.keys()
    assert all(restarted[worker] != started[worker] for worker in started), (started, restarted)
    jobs = compose_stack.api.wait_for(job_ids, timeout=180)
    assert {job["state"] for job in jobs.values()} == {"succeeded"}, jobs
    assert len(jobs) == 60


def test_down_then_up_keeps_the_jobs_and_the_dead_letters(compose_stack: Stack) -> None:
    before = compose_stack.api.get("/api/v1/jobs", limit=200).json()["items"]
    dead_letters = compose_stack.queue_depths()["default.XQ"]
    assert before
    assert dead_letters

    started = time.monotonic()
    compose_stack.project.down()
    FACTS["down"] = f"{time.monotonic() - started:.0f} s"
    assert compose_stack.project.containers() == []
    started = time.monotonic()
    compose_stack.project.up()
    compose_stack.api.wait_until_answering()
    FACTS["up again -> API answering"] = f"{time.monotonic() - started:.0f} s"

    after = compose_stack.api.get("/api/v1/jobs", limit=200).json()["items"]
    assert [(job["id"], job["state"]) for job in after] == [(job["id"], job["state"]) for job in before]
    assert compose_stack.queue_depths()["default.XQ"] == dead_letters
