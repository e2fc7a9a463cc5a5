"""The ledger, not the message, decides what runs; and what a job carries stays out of the logs."""

from __future__ import annotations

from typing import Any

import orjson
from dramatiq import Message

from tests.support import broker
from tests.support.infra import Infra
from tests.support.smtp import SmtpServer
from tests.support.stack import Stack

ECHO = "app.tasks.example.echo"


def forged(job_id: str, actor: str, kwargs: dict[str, Any]) -> bytes:
    message: Message[Any] = Message(
        queue_name="default", actor_name=actor, args=(), kwargs=kwargs, options={"job_id": job_id, "run": 1}
    )
    return message.encode()


def test_a_forged_message_rings_for_its_job_but_the_worker_runs_what_the_ledger_holds(
    stack: Stack, infra: Infra
) -> None:
    # Nothing publishes or consumes while the forgeries are planted: only they are in the queue.
    stack.processes["worker"].stop()
    stack.processes["relay"].stop()
    job_id = stack.post_job(ECHO, {"message": "original"})
    broker.publish_raw(infra, "default", forged(job_id, "app.tasks.example.sleep", {"seconds": 30}))
    broker.publish_raw(infra, "default", forged(job_id, ECHO, {"message": "forged"}))

    worker = stack.start_worker("worker-again")
    job = stack.wait_for([job_id], timeout=30)[job_id]
    assert job["state"] == "succeeded"
    assert job["result"] == {"message": "original"}, "the ledger's payload ran, never the message's"
    assert job["attempts"] == 1

    lines = [orjson.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    refused = [line for line in lines if str(line.get("event", "")).startswith("message refused")]
    assert len(refused) == 1, "the message naming another task was refused, not run"
    assert refused[0]["message_task"] == "app.tasks.example.sleep"
    assert refused[0]["ledger_task"] == ECHO
    assert "forged" not in worker.log()


def test_sending_an_email_logs_no_address_and_a_refusal_keeps_none_in_last_error(
    stack: Stack, smtp_server: SmtpServer
) -> None:
    address = "ada.lovelace@example.com"
    refused_address = "reject-grace.hopper@example.com"
    with stack.client() as client:
        sent = client.post(
            "/api/v1/emails", json={"to": address, "subject": "Hi", "body": "secret body text"}
        )
        refused = client.post("/api/v1/emails", json={"to": refused_address, "subject": "Hi", "body": "b"})
    jobs = stack.wait_for([sent.json()["id"], refused.json()["id"]])
    assert jobs[sent.json()["id"]]["state"] == "succeeded"
    assert len(smtp_server.handler.to(address)) == 1, "the mail went out"
    dead = jobs[refused.json()["id"]]
    assert dead["state"] == "dead"
    assert "550" in dead["last_error"]
    assert refused_address not in dead["last_error"]
    assert "grace.hopper" not in dead["last_error"]
    for name in ("worker", "relay", "api"):
        log = stack.processes[name].log()
        for secret in (address, refused_address, "grace.hopper", "secret body text"):
            assert secret not in log, f"{name} logged {secret!r}"
    assert address not in str(jobs[sent.json()["id"]]["result"])
