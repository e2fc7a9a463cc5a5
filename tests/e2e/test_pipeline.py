"""The life of a job, driven from outside: real api, relay and worker processes."""

from __future__ import annotations

import json
import time
from datetime import datetime

import httpx

from tests.support import broker
from tests.support.infra import Infra, free_port
from tests.support.keys import make_key
from tests.support.smtp import SmtpServer
from tests.support.stack import Stack


def test_an_email_posted_over_http_is_accepted_at_once_and_delivered_exactly_once(
    stack: Stack, smtp_server: SmtpServer
) -> None:
    body = {"to": "ada@example.com", "subject": "Welcome", "body": "Hello from Conveyor"}
    with stack.client() as client:
        started = time.monotonic()
        response = client.post("/api/v1/emails", json=body)
        answered_in = time.monotonic() - started
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["state"] == "queued"
    assert accepted["task"] == "app.tasks.example.send_email"
    assert response.headers["Location"] == f"/api/v1/jobs/{accepted['id']}"
    assert accepted["status_url"] == response.headers["Location"]
    assert answered_in < 5, "the API must not wait for the task"

    job = stack.wait_for([accepted["id"]])[accepted["id"]]
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 1
    assert job["finished_at"] is not None
    time.sleep(0.5)  # a duplicate delivery, if any, would have arrived by now
    received = smtp_server.handler.to("ada@example.com")
    assert len(received) == 1
    assert b"Subject: Welcome" in received[0].content
    assert f"<{accepted['id']}@conveyor>".encode() in received[0].content


def retry_log_lines(stack: Stack, job_id: str) -> list[dict[str, object]]:
    lines = []
    for raw in stack.processes["worker"].log().splitlines():
        if job_id in raw and raw.startswith("{"):
            entry = json.loads(raw)
            if str(entry.get("event", "")).startswith("job retrying"):
                lines.append(entry)
    return lines


def attempts(stack: Stack, job_id: str) -> list[dict[str, object]]:
    with stack.client() as client:
        return list(client.get(f"/api/v1/jobs/{job_id}/attempts").json())


def test_a_job_failing_twice_then_succeeding_runs_three_times_with_growing_delays(stack: Stack) -> None:
    job_id = stack.post_job("app.tasks.example.flaky", {"fail_times": 2})
    job = stack.wait_for([job_id])[job_id]
    assert job["state"] == "succeeded"
    assert job["attempts"] == 3
    assert job["result"] == {"attempts": 3}
    history = attempts(stack, job_id)
    assert [a["outcome"] for a in history] == ["retrying", "retrying", "succeeded"]
    scheduled = [float(str(line["retry_in_s"])) for line in retry_log_lines(stack, job_id)]
    assert len(scheduled) == 2
    assert scheduled[1] > scheduled[0], "each retry waits longer than the one before"
    for delay, before, after in zip(scheduled, history, history[1:], strict=False):
        waited = (
            datetime.fromisoformat(str(after["started_at"]))
            - datetime.fromisoformat(str(before["finished_at"]))
        ).total_seconds()
        assert waited >= delay - 0.01, "a retry never runs before its scheduled time"


def test_a_job_that_always_fails_dies_after_max_attempts_into_the_dead_letter_queue_and_replays(
    stack: Stack, infra: Infra
) -> None:
    job_id = stack.post_job("app.tasks.example.flaky", {"fail_times": 5})
    job = stack.wait_for([job_id])[job_id]
    assert job["state"] == "dead"
    assert job["attempts"] == job["max_attempts"] == 5
    assert "failure 5 of 5" in job["last_error"]
    assert broker.depth_becomes(infra, "default.XQ", 1) == 1, "the relay put its copy in default.XQ"
    with stack.client() as client:
        assert client.post(f"/api/v1/jobs/{job_id}/replay").status_code == 202
    replayed = stack.wait_for([job_id])[job_id]
    assert replayed["state"] == "succeeded"
    assert replayed["run"] == 2
    assert replayed["attempts"] == 1
    assert replayed["result"] == {"attempts": 6}
    history = attempts(stack, job_id)
    assert [(a["run"], a["outcome"]) for a in history] == [(1, "retrying")] * 4 + [
        (1, "dead"),
        (2, "succeeded"),
    ]
    assert broker.depth_becomes(infra, "default.XQ", 0) == 0, "the relay took the dead run's copy out"


def test_a_permanent_smtp_refusal_kills_the_job_after_one_attempt(
    stack: Stack, smtp_server: SmtpServer, infra: Infra
) -> None:
    with stack.client() as client:
        response = client.post(
            "/api/v1/emails", json={"to": "reject-me@example.com", "subject": "s", "body": "b"}
        )
    job_id = response.json()["id"]
    job = stack.wait_for([job_id])[job_id]
    assert job["state"] == "dead"
    assert job["attempts"] == 1
    assert "550" in job["last_error"]
    assert broker.depth_becomes(infra, "email.XQ", 1) == 1


def test_a_deferring_smtp_server_makes_the_email_retry_until_attempts_run_out(
    stack: Stack, smtp_server: SmtpServer
) -> None:
    with stack.client() as client:
        response = client.post(
            "/api/v1/emails", json={"to": "defer@example.com", "subject": "s", "body": "b"}
        )
    job_id = response.json()["id"]
    job = stack.wait_for([job_id], timeout=90)[job_id]
    assert job["state"] == "dead"
    assert job["attempts"] == 5
    assert "451" in job["last_error"]
    assert [a["outcome"] for a in attempts(stack, job_id)] == ["retrying"] * 4 + ["dead"]


def test_jobs_accepted_while_the_relay_cannot_reach_the_broker_all_complete_once_it_can(
    stack: Stack, infra: Infra
) -> None:
    stack.processes["relay"].stop()
    closed = free_port()
    stack.start_relay(env={"BROKER_URL": f"amqp://guest:guest@127.0.0.1:{closed}/"})
    ids = [stack.post_job("app.tasks.example.echo", {"message": f"m{i}"}) for i in range(20)]
    time.sleep(1.5)
    assert {stack.job(job_id)["state"] for job_id in ids} == {"queued"}
    assert "broker unavailable" in stack.processes["relay"].log()
    stack.processes["relay"].stop()
    stack.start_relay()
    done = stack.wait_for(ids)
    assert {job["state"] for job in done.values()} == {"succeeded"}


def test_a_message_delivered_twice_runs_its_job_once(stack: Stack, infra: Infra) -> None:
    stack.processes["worker"].stop()
    job_id = stack.post_job("app.tasks.example.echo", {"message": "once"})
    deadline = time.monotonic() + 10
    while broker.depth(infra, "default") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    publish_twice(infra, job_id)
    assert broker.depth(infra, "default") == 3
    stack.start_worker()
    job = stack.wait_for([job_id])[job_id]
    deadline = time.monotonic() + 10
    while broker.depth(infra, "default") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job["state"] == "succeeded"
    assert job["attempts"] == 1
    assert len(attempts(stack, job_id)) == 1
    assert stack.processes["worker"].log().count("message skipped") == 2


def publish_twice(infra: Infra, job_id: str) -> None:
    from dramatiq import Message

    message = Message(
        queue_name="default",
        actor_name="app.tasks.example.echo",
        args=(),
        kwargs={"message": "once"},
        options={"job_id": job_id, "run": 1},
    )
    for _ in range(2):
        broker.publish_raw(infra, "default", message.encode())


def test_an_export_reports_progress_holds_its_clients_jobs_only_and_its_csv_is_fetchable(
    stack: Stack,
) -> None:
    mine, theirs = make_key(["enqueue"]), make_key(["enqueue"])

    def post(key: str, task: str, payload: dict[str, object]) -> httpx.Response:
        with stack.client(key) as client:
            return client.post("/api/v1/jobs", json={"task": task, "payload": payload})

    ids = [post(mine, "app.tasks.example.echo", {"message": f"m{i}"}).json()["id"] for i in range(25)]
    others = [post(theirs, "app.tasks.example.echo", {"message": "x"}).json()["id"] for _ in range(5)]
    stack.wait_for(ids + others)
    accepted = post(
        mine, "app.tasks.example.export_jobs", {"task": "app.tasks.example.echo", "chunk_size": 10}
    )
    assert accepted.status_code == 202, accepted.text
    export_id = accepted.json()["id"]
    job = stack.wait_for([export_id])[export_id]
    assert job["state"] == "succeeded", job
    assert job["progress"] == 100
    assert job["result"]["rows"] == 25
    with stack.client(mine) as client:
        response = client.get(job["result"]["artifact_url"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert int(response.headers["content-length"]) == len(response.content) == job["result"]["bytes"]
    lines = response.text.strip().splitlines()
    assert lines[0].startswith("id,task,state")
    assert len(lines) == 26
    assert {line.split(",")[0] for line in lines[1:]} == set(ids), "the other client's jobs are left out"
    with stack.client(theirs) as client:
        assert client.get(job["result"]["artifact_url"]).status_code == 404
