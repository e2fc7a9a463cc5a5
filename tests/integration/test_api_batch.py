"""`POST /api/v1/jobs/batch` in process: all or nothing, in order, one key for the whole batch."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from tests.integration.conftest import count_jobs
from tests.support.exposition import Samples, parse, value
from tests.support.infra import Infra
from tests.support.keys import auth, make_key

pytestmark = pytest.mark.anyio

ECHO = "app.tasks.example.echo"
SLEEP = "app.tasks.example.sleep"
BATCH = "/api/v1/jobs/batch"


def echoes(count: int, prefix: str = "m") -> list[dict[str, Any]]:
    return [{"task": ECHO, "payload": {"message": f"{prefix}{i}"}} for i in range(count)]


def rows(infra: Infra) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(infra.libpq_url) as conn:
        found = conn.execute("SELECT id, task, state, payload, priority, client_id FROM jobs").fetchall()
    return {str(row[0]): row[1:] for row in found}


async def scrape(api: httpx.AsyncClient) -> Samples:
    return parse((await api.get("/metrics")).text)


async def test_a_batch_is_stored_whole_and_answered_in_request_order(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    jobs = [
        {"task": ECHO, "payload": {"message": "first"}, "priority": 7},
        {"task": SLEEP, "payload": {"seconds": 0}},
        {"task": ECHO, "payload": {"message": "last"}, "delay_seconds": 60},
    ]
    response = await api.post(BATCH, json={"jobs": jobs})
    assert response.status_code == 202, response.text
    answered = response.json()["jobs"]
    assert [job["task"] for job in answered] == [ECHO, SLEEP, ECHO]
    assert all(set(job) == {"id", "task", "state", "status_url"} for job in answered)
    assert all(job["state"] == "queued" for job in answered)
    assert all(job["status_url"] == f"/api/v1/jobs/{job['id']}" for job in answered)
    stored = rows(clean_ledger)
    assert len(stored) == 3
    first, second, last = (stored[job["id"]] for job in answered)
    assert first[2:4] == ({"message": "first"}, 7)
    assert second[2] == {"seconds": 0.0}
    assert last[2] == {"message": "last"}
    client_ids = {row[4] for row in stored.values()}
    assert len(client_ids) == 1
    assert None not in client_ids
    view = (await api.get(answered[2]["status_url"])).json()
    assert view["state"] == "queued"
    assert view["available_at"] > view["created_at"]


async def test_each_job_of_a_batch_counts_as_accepted(api: httpx.AsyncClient) -> None:
    before = await scrape(api)
    assert (await api.post(BATCH, json={"jobs": echoes(5)})).status_code == 202
    after = await scrape(api)
    moved = value(after, "conveyor_jobs_accepted_total", task=ECHO) - value(
        before, "conveyor_jobs_accepted_total", task=ECHO
    )
    assert moved == 5


async def test_one_invalid_item_refuses_the_batch_naming_its_index_and_nothing_is_stored(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    jobs = echoes(6)
    jobs[3]["payload"]["message"] = 5
    response = await api.post(BATCH, json={"jobs": jobs})
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [
        ["body", "jobs", 3, "payload", "message"]
    ]
    assert count_jobs(clean_ledger) == 0


async def test_every_invalid_item_is_named_an_unknown_task_and_a_nul_too(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    jobs = echoes(5)
    jobs[1] = {"task": "app.tasks.example.nope", "payload": {}}
    jobs[2]["payload"]["message"] = "zero\u0000byte"
    jobs[4]["delay_seconds"] = -1
    response = await api.post(BATCH, json={"jobs": jobs})
    assert response.status_code == 422
    locs = [error["loc"] for error in response.json()["detail"]]
    assert ["body", "jobs", 4, "delay_seconds"] in locs  # the items' own fields come first
    jobs[4].pop("delay_seconds")
    response = await api.post(BATCH, json={"jobs": jobs})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [error["loc"] for error in detail] == [
        ["body", "jobs", 1, "task"],
        ["body", "jobs", 2, "payload", "message"],
    ]
    assert [error["type"] for error in detail] == ["unknown_task", "string_unstorable"]
    assert count_jobs(clean_ledger) == 0


async def test_an_empty_batch_and_one_past_max_batch_jobs_are_refused_naming_jobs(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    for jobs in ([], echoes(1001)):
        response = await api.post(BATCH, json={"jobs": jobs})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", "jobs"]
    assert (await api.post(BATCH, json={"job": echoes(1)})).status_code == 422
    assert count_jobs(clean_ledger) == 0


async def test_a_thousand_typical_jobs_fit_in_one_request_and_a_larger_body_is_413(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    email = {"to": "someone@example.com", "subject": "Your weekly report", "body": "Hello! " * 20}
    jobs = [{"task": "app.tasks.example.send_email", "payload": email}] * 1000
    response = await api.post(BATCH, json={"jobs": jobs})
    assert response.status_code == 202, response.text
    assert count_jobs(clean_ledger) == 1000
    email["body"] = "x" * 1100
    response = await api.post(BATCH, json={"jobs": jobs})
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    assert count_jobs(clean_ledger) == 1000


async def test_a_repeated_idempotency_key_returns_the_same_jobs_and_stores_nothing_new(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    body = {"jobs": echoes(4)}
    headers = {"Idempotency-Key": "nightly-import-1"}
    first = await api.post(BATCH, json=body, headers=headers)
    assert first.status_code == 202
    assert "idempotent-replayed" not in first.headers
    again = await api.post(BATCH, json=body, headers=headers)
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert [job["id"] for job in again.json()["jobs"]] == [job["id"] for job in first.json()["jobs"]]
    assert count_jobs(clean_ledger) == 4


async def test_a_replayed_batch_reports_each_jobs_current_state(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    body = {"jobs": echoes(3)}
    headers = {"Idempotency-Key": "states"}
    ids = [job["id"] for job in (await api.post(BATCH, json=body, headers=headers)).json()["jobs"]]
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        conn.execute("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id = %s", (ids[1],))
    again = (await api.post(BATCH, json=body, headers=headers)).json()["jobs"]
    assert [job["state"] for job in again] == ["queued", "succeeded", "queued"]


async def test_the_same_key_with_another_batch_or_a_single_job_is_422(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    headers = {"Idempotency-Key": "import-2"}
    assert (await api.post(BATCH, json={"jobs": echoes(3)}, headers=headers)).status_code == 202
    for other in (echoes(3, "other"), echoes(4), echoes(2)):
        response = await api.post(BATCH, json={"jobs": other}, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    single = await api.post("/api/v1/jobs", json=echoes(1)[0], headers=headers)
    assert single.status_code == 422
    assert count_jobs(clean_ledger) == 3


async def test_the_same_batch_key_from_two_clients_makes_two_batches(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    body = {"jobs": echoes(2)}
    other = auth(make_key(["enqueue"]))
    first = await api.post(BATCH, json=body, headers={"Idempotency-Key": "shared"})
    second = await api.post(BATCH, json=body, headers={"Idempotency-Key": "shared", **other})
    assert first.status_code == second.status_code == 202
    assert {j["id"] for j in first.json()["jobs"]}.isdisjoint(j["id"] for j in second.json()["jobs"])
    assert count_jobs(clean_ledger) == 4


async def test_an_enqueue_only_key_reads_its_batchs_jobs_and_no_one_elses(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    mine, theirs = auth(make_key(["enqueue"])), auth(make_key(["enqueue"]))
    response = await api.post(BATCH, json={"jobs": echoes(3)}, headers=mine)
    assert response.status_code == 202
    for job in response.json()["jobs"]:
        assert (await api.get(job["status_url"], headers=mine)).status_code == 200
        assert (await api.get(job["status_url"], headers=theirs)).status_code == 404


async def test_a_key_without_enqueue_is_403_and_no_key_is_401(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    reader = auth(make_key(["read", "operate"]))
    assert (await api.post(BATCH, json={"jobs": echoes(1)}, headers=reader)).status_code == 403
    anonymous = await api.post(BATCH, json={"jobs": echoes(1)}, headers={"authorization": ""})
    assert anonymous.status_code == 401
    assert count_jobs(clean_ledger) == 0


async def test_the_batch_route_is_documented_with_its_body_and_answers(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json")).json()
    operation = document["paths"][BATCH]["post"]
    assert operation["operationId"] == "enqueue_job_batch"
    assert {"202", "400", "401", "403", "413", "415", "422", "503"} <= set(operation["responses"])
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["jobs"]["maxItems"] == 1000
    assert "discriminator" in schema["properties"]["jobs"]["items"]
