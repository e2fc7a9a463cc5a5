"""Duplicates and garbage: a message twice, a job past its lease, one key ten times, bytes
that are not a message. Effects stay at one per job (I2); nothing hangs (I3).
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.faults.conftest import Conveyor
from tests.support.faults import (
    EFFECT_TASK,
    QUEUE,
    job_message,
    peek_queue,
    post,
    publish_raw,
    wait_for_log,
)
from tests.support.keys import auth
from tests.support.stack import Process

LEASE_SECONDS = 3.0


def skips_of(process: Process, job_id: str) -> int:
    return sum("message skipped" in line and job_id in line for line in process.log().splitlines())


def republish(conveyor: Conveyor, job_id: str, copies: int) -> None:
    """Publish the job's message again, byte for byte as the relay does, past the relay."""
    row = conveyor.ledger.query("SELECT payload, run FROM jobs WHERE id = %(id)s", {"id": job_id})[0]
    body = job_message(job_id, EFFECT_TASK, row["payload"], run=row["run"])
    for _ in range(copies):
        publish_raw(conveyor.broker_url, QUEUE, body)


def test_a_message_published_twice_and_again_after_success_runs_its_job_once(conveyor: Conveyor) -> None:
    ledger = conveyor.ledger
    job_id = post(conveyor.base_url, EFFECT_TASK, {"sleep_seconds": 0.3})
    ledger.wait_until(
        lambda: ledger.job(job_id)["published_at"] is not None, timeout=30, what="the relay published it"
    )
    republish(conveyor, job_id, copies=2)  # three copies wait in the queue
    first = conveyor.workers.start(threads=4)
    second = conveyor.workers.start(threads=4)
    job = ledger.wait_terminal([job_id], timeout=30)[job_id]
    assert (job["state"], job["attempts"]) == ("succeeded", 1)

    republish(conveyor, job_id, copies=2)  # and two more after it succeeded
    ledger.wait_until(
        lambda: skips_of(first, job_id) + skips_of(second, job_id) == 4, timeout=30, what="4 skipped copies"
    )
    with httpx.Client(base_url=conveyor.base_url, timeout=10, headers=auth()) as client:
        replay = client.post(f"/api/v1/jobs/{job_id}/replay")

    assert replay.status_code == 409, "a succeeded job cannot be replayed"
    assert ledger.effects("started")[job_id] == 1, "the task ran once"
    assert ledger.effects()[job_id] == 1
    assert (ledger.job(job_id)["state"], ledger.job(job_id)["attempts"]) == ("succeeded", 1)


def test_a_job_longer_than_its_lease_keeps_it_and_no_second_worker_takes_it(conveyor: Conveyor) -> None:
    ledger = conveyor.ledger
    # A prefetch of one: the owner, its one thread busy, holds one copy at most, so the
    # second worker is sure to be offered the others.
    owner = conveyor.workers.start(threads=1, env={"WORKER_PREFETCH": "1"})
    job_id = post(conveyor.base_url, EFFECT_TASK, {"sleep_seconds": 4 * LEASE_SECONDS})
    ledger.wait_until(lambda: ledger.job(job_id)["state"] == "running", timeout=30, what="the job running")
    first_lease = ledger.job(job_id)["lease_expires_at"]
    other = conveyor.workers.start(threads=2)
    wait_for_log(other, "worker started", timeout=30)
    republish(conveyor, job_id, copies=3)

    leases = []
    while ledger.job(job_id)["state"] == "running":
        leases.append(ledger.job(job_id)["lease_expires_at"])
        time.sleep(0.5)
    job = ledger.job(job_id)

    assert (job["state"], job["attempts"]) == ("succeeded", 1)
    assert max(lease for lease in leases if lease) > first_lease, "the lease was renewed"
    assert [a["outcome"] for a in ledger.attempts(job_id)] == ["succeeded"]
    assert ledger.effects("started")[job_id] == 1, "no second execution"
    assert ledger.effects()[job_id] == 1
    ledger.wait_until(
        lambda: skips_of(owner, job_id) + skips_of(other, job_id) == 3, timeout=20, what="3 copies skipped"
    )
    assert skips_of(other, job_id) >= 1, "the second worker saw the job and left it alone"


def test_ten_concurrent_posts_with_one_idempotency_key_make_one_job(conveyor: Conveyor) -> None:
    ledger = conveyor.ledger
    body = {"task": EFFECT_TASK, "payload": {"sleep_seconds": 0.1}}
    headers = {"Idempotency-Key": f"fault-{os.getpid()}-{time.time_ns()}"}
    start = threading.Barrier(10)
    answers: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=conveyor.base_url, timeout=15, headers=auth()) as client:
            start.wait(10)
            answers.append(client.post("/api/v1/jobs", json=body, headers=headers))

    threads = [threading.Thread(target=send) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    statuses = Counter(answer.status_code for answer in answers)
    named = {answer.json()["id"] for answer in answers if answer.status_code == 202}
    assert len(answers) == 10
    assert set(statuses) <= {202, 409}, [a.text for a in answers]
    assert statuses[202] >= 1
    assert len(named) == 1, "every 202 names the same job"
    job_id = named.pop()
    rows = ledger.query(
        "SELECT id::text AS id FROM jobs WHERE idempotency_key = %(key)s", {"key": headers["Idempotency-Key"]}
    )
    assert [row["id"] for row in rows] == [job_id]
    assert ledger.query("SELECT count(*) AS n FROM jobs")[0]["n"] == 1

    conveyor.workers.start(threads=2)
    assert ledger.wait_terminal([job_id], timeout=30)[job_id]["state"] == "succeeded"
    assert ledger.effects() == Counter({job_id: 1})


class _Mkdir:
    """Unpickling this creates a directory: proof, if it exists, that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.path),))


def test_bytes_that_are_not_a_json_message_go_to_the_dead_letter_queue_unread(
    conveyor: Conveyor, tmp_path: Path
) -> None:
    worker = conveyor.workers.start(threads=2)
    marker = tmp_path / "unpickled"
    not_json = b"this is not json {"
    utf16 = orjson.dumps({"queue_name": QUEUE, "actor_name": EFFECT_TASK}).decode().encode("utf-16")
    pickled = pickle.dumps(_Mkdir(marker))
    not_a_message = b'{"hello": "world"}'
    no_job_id = job_message("not-a-uuid", EFFECT_TASK, {})
    garbage = [
        (not_json, {}),
        (utf16, {"content_encoding": "utf-16", "content_type": "application/json"}),
        (pickled, {"content_type": "application/x-python-serialize"}),
        (not_a_message, {"content_type": "application/json"}),
        (no_job_id, {}),
    ]
    for body, properties in garbage:
        publish_raw(conveyor.broker_url, QUEUE, body, **properties)
    job_id = post(conveyor.base_url, EFFECT_TASK, {})

    conveyor.ledger.wait_terminal([job_id], timeout=30)
    conveyor.ledger.wait_until(
        lambda: len(peek_queue(conveyor.broker_url, f"{QUEUE}.XQ")) >= len(garbage),
        timeout=30,
        what="the garbage dead-lettered",
    )
    dead_letters = peek_queue(conveyor.broker_url, f"{QUEUE}.XQ")

    assert sorted(dead_letters) == sorted(body for body, _ in garbage), "rejected as they came, unchanged"
    assert not marker.exists(), "the pickle was never loaded"
    assert conveyor.ledger.job(job_id)["state"] == "succeeded"
    assert worker.alive()
    assert worker.log().count('"worker started"') == 1, "the worker process never restarted"
