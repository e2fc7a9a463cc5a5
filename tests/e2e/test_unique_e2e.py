"""Unique while in flight, driven from outside: real api, relay and worker processes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.support.stack import Stack

SYNC = "app.tasks.example.sync_account"


def test_twenty_concurrent_posts_for_one_key_make_one_job_and_once_it_has_run_a_new_one(
    stack: Stack,
) -> None:
    # Long enough that the job is still in flight when the last POST arrives.
    body = {"task": SYNC, "payload": {"account": "acme", "seconds": 3.0}}
    clients = [stack.client() for _ in range(20)]
    for client in clients:  # connected before the POSTs, so that they arrive together
        client.get("/health/live")
    start = threading.Barrier(20)

    def post(client: httpx.Client) -> httpx.Response:
        start.wait()
        try:
            return client.post("/api/v1/jobs", json=body)
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(post, clients))
    assert [a.status_code for a in answers] == [202] * 20, answers[0].text
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1
    assert sorted(a.json().get("duplicate", False) for a in answers) == [False] + [True] * 19
    [job_id] = ids
    finished = stack.wait_for([job_id])[job_id]
    assert (finished["state"], finished["attempts"], finished["unique_key"]) == ("succeeded", 1, "acme")
    with stack.client() as client:
        again = client.post(
            "/api/v1/jobs", json={**body, "payload": {"account": "acme", "seconds": 0}}
        ).json()
        listed = client.get("/api/v1/jobs", params={"task": SYNC}).json()["items"]
    assert ("duplicate" in again, again["id"] != job_id) == (False, True)
    assert len(listed) == 2
    assert stack.wait_for([again["id"]])[again["id"]]["state"] == "succeeded"
