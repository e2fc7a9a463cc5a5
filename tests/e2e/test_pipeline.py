"""The life of a job, driven from outside: real api, relay and worker processes."""

from __future__ import annotations

import time

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
