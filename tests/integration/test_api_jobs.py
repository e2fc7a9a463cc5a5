"""The jobs contract in process: accept, read, list, replay, cancel, tasks, idempotency."""

from __future__ import annotations

import asyncio
from datetime import datetime

import httpx
import psycopg
import pytest

from tests.integration.conftest import count_jobs
from tests.support.infra import Infra
from tests.support.keys import auth

pytestmark = pytest.mark.anyio

ECHO = "app.tasks.example.echo"


async def post_echo(api: httpx.AsyncClient, message: str = "hi", **extra: object) -> httpx.Response:
    return await api.post("/api/v1/jobs", json={"task": ECHO, "payload": {"message": message}, **extra})


def set_state(infra: Infra, job_id: str, state: str) -> None:
    with psycopg.connect(infra.libpq_url) as conn:
        conn.execute("UPDATE jobs SET state = %s WHERE id = %s", (state, job_id))


async def test_an_accepted_job_is_stored_queued_and_readable(api: httpx.AsyncClient) -> None:
    response = await post_echo(api)
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"id", "task", "state", "status_url"}
    assert response.headers["location"] == body["status_url"] == f"/api/v1/jobs/{body['id']}"
    job = (await api.get(body["status_url"])).json()
    for field in (
        "id",
        "task",
        "state",
        "attempts",
        "max_attempts",
        "progress",
        "created_at",
        "started_at",
        "finished_at",
        "next_retry_at",
        "last_error",
        "result",
    ):
        assert field in job
    assert job["state"] == "queued"
    assert job["attempts"] == 0
    assert job["max_attempts"] == 5
    assert job["payload"] == {"message": "hi"}


async def test_a_delayed_job_becomes_available_only_after_its_delay(api: httpx.AsyncClient) -> None:
    body = (await post_echo(api, delay_seconds=3600)).json()
    job = (await api.get(body["status_url"])).json()
    created = datetime.fromisoformat(job["created_at"])
    available = datetime.fromisoformat(job["available_at"])
    assert 3599 <= (available - created).total_seconds() <= 3601


async def test_an_unknown_job_is_404(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


async def test_the_list_pages_newest_first_with_a_cursor_and_filters(api: httpx.AsyncClient) -> None:
    ids = [(await post_echo(api, f"m{i}")).json()["id"] for i in range(5)]
    await api.post("/api/v1/jobs", json={"task": "app.tasks.example.sleep", "payload": {"seconds": 1}})
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = f"/api/v1/jobs?task={ECHO}&limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = (await api.get(query)).json()
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert pages == 3
    queued = (await api.get("/api/v1/jobs?state=queued&limit=200")).json()["items"]
    assert len(queued) == 6
    assert (await api.get("/api/v1/jobs?state=dead")).json() == {"items": [], "next_cursor": None}


async def test_only_a_dead_job_can_be_replayed_and_it_starts_a_new_run(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    job_id = (await post_echo(api)).json()["id"]
    refused = await api.post(f"/api/v1/jobs/{job_id}/replay")
    assert refused.status_code == 409
    assert "queued" in refused.json()["detail"]
    set_state(clean_ledger, job_id, "dead")
    replayed = await api.post(f"/api/v1/jobs/{job_id}/replay")
    assert replayed.status_code == 202
    job = (await api.get(f"/api/v1/jobs/{job_id}")).json()
    assert (job["state"], job["run"], job["attempts"]) == ("queued", 2, 0)
    assert (await api.post("/api/v1/jobs/00000000-0000-0000-0000-000000000000/replay")).status_code == 404


async def test_a_job_that_has_not_started_can_be_cancelled_once(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    job_id = (await post_echo(api)).json()["id"]
    cancelled = await api.post(f"/api/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert cancelled.json()["cancel_requested_at"] is None, "nothing to ask: it never ran"
    refused = await api.post(f"/api/v1/jobs/{job_id}/cancel")
    assert refused.status_code == 409
    assert "cancelled" in refused.json()["detail"]


async def test_a_running_job_is_asked_to_stop_with_a_202_and_a_finished_one_is_a_409(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    running = (await post_echo(api)).json()["id"]
    set_state(clean_ledger, running, "running")
    asked = await api.post(f"/api/v1/jobs/{running}/cancel")
    assert asked.status_code == 202
    assert asked.json()["state"] == "running", "its worker ends it"
    assert asked.json()["cancel_requested_at"] is not None
    again = await api.post(f"/api/v1/jobs/{running}/cancel")
    assert again.status_code == 202
    assert again.json()["cancel_requested_at"] == asked.json()["cancel_requested_at"]
    for state in ("succeeded", "dead"):
        set_state(clean_ledger, running, state)
        refused = await api.post(f"/api/v1/jobs/{running}/cancel")
        assert refused.status_code == 409
        assert state in refused.json()["detail"]


async def test_the_task_list_shows_every_example_with_its_schema_and_retry_policy(
    api: httpx.AsyncClient,
) -> None:
    tasks = {task["name"]: task for task in (await api.get("/api/v1/tasks")).json()}
    for name in ("send_email", "export_jobs", "flaky", "echo", "sleep"):
        assert f"app.tasks.example.{name}" in tasks
    echo = tasks[ECHO]
    assert echo["payload_schema"]["required"] == ["message"]
    assert echo["payload_schema"]["additionalProperties"] is False
    assert echo["retry"]["max_attempts"] == 5
    assert echo["retry"]["backoff_base_seconds"] > 0


async def test_the_same_idempotency_key_and_body_return_the_first_job(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await api.post("/api/v1/jobs", json={"task": ECHO, "payload": {"message": "a"}}, headers=headers)
    again = await api.post("/api/v1/jobs", json={"payload": {"message": "a"}, "task": ECHO}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert count_jobs(clean_ledger) == 1


async def test_the_same_idempotency_key_with_another_body_is_422(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    headers = {"Idempotency-Key": "order-43"}
    await api.post("/api/v1/jobs", json={"task": ECHO, "payload": {"message": "a"}}, headers=headers)
    other = await api.post("/api/v1/jobs", json={"task": ECHO, "payload": {"message": "b"}}, headers=headers)
    assert other.status_code == 422
    assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    email = await api.post(
        "/api/v1/emails", json={"to": "a@example.com", "subject": "s", "body": "b"}, headers=headers
    )
    assert email.status_code == 422
    assert count_jobs(clean_ledger) == 1


async def test_concurrent_requests_with_one_idempotency_key_make_one_job(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    headers = {"Idempotency-Key": "burst-1"}
    body = {"task": ECHO, "payload": {"message": "once"}}
    answers = await asyncio.gather(*(api.post("/api/v1/jobs", json=body, headers=headers) for _ in range(10)))
    assert {answer.status_code for answer in answers} == {202}
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert count_jobs(clean_ledger) == 1


REFUSE_AT_COMMIT = """
CREATE OR REPLACE FUNCTION refuse_replayed_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.run > OLD.run THEN RAISE EXCEPTION 'refused at commit (test)'; END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER refuse_replayed_job AFTER UPDATE ON jobs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_replayed_job();
"""


async def test_a_replay_whose_commit_fails_is_not_answered_202(clean_ledger: Infra) -> None:
    """The transaction commits before the answer is sent: a refused COMMIT is never a 202."""
    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines

    application = create_app()
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://conveyor.test", headers=auth()
    ) as client:
        job_id = (await post_echo(client)).json()["id"]
        set_state(clean_ledger, job_id, "dead")
        with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
            conn.execute(REFUSE_AT_COMMIT)
        try:
            response = await client.post(f"/api/v1/jobs/{job_id}/replay")
        finally:
            with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
                conn.execute("DROP TRIGGER refuse_replayed_job ON jobs; DROP FUNCTION refuse_replayed_job")
        assert response.status_code >= 500, response.text
        assert (await client.get(f"/api/v1/jobs/{job_id}")).json()["state"] == "dead"
    intake = getattr(application.state, "intake", None)
    if intake is not None:
        await intake.close()
    await dispose_async_engines()
