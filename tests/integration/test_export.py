"""What an export holds, how it is kept and downloaded, and one export per client at a time.

Jobs are enqueued through the API in this process (its group commit) with keys of their own;
the export runs in this process the way a worker thread runs it (`tests.support.running`).
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from app.errors import AlreadyInFlight
from app.ledger import jobs as ledger
from app.ledger.jobs import NewJob
from app.tasks.example import export_jobs
from tests.support import running
from tests.support.infra import Infra
from tests.support.keys import auth, make_key, revoke_key

pytestmark = pytest.mark.anyio

EXPORT = "app.tasks.example.export_jobs"
ECHO = "app.tasks.example.echo"


def key_id(key: str) -> str:
    return key.split("_")[1]


@pytest.fixture
def keys(clean_ledger: Infra) -> dict[str, str]:
    """Two enqueue-only clients, A and B, and a client whose key also reads everything."""
    suffix = uuid.uuid4().hex[:6]
    return {
        "a-name": f"client-a-{suffix}",
        "a": make_key(["enqueue"], name=f"client-a-{suffix}"),
        "b": make_key(["enqueue"], name=f"client-b-{suffix}"),
        "reader": make_key(["enqueue", "read"], name=f"reader-{suffix}"),
    }


def seed(infra: Infra, client_id: str | None, count: int) -> set[str]:
    """`count` finished echo jobs of one client (None: an operator's), written in one INSERT."""
    jobs = [NewJob(ECHO, "default", '{"message": "hi"}', 5, client_id=client_id) for _ in range(count)]
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        ledger.insert(conn, jobs)
        conn.execute("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE task = %s", (ECHO,))
    return {str(job.id) for job in jobs}


async def post_export(api: httpx.AsyncClient, key: str, **payload: Any) -> httpx.Response:
    return await api.post("/api/v1/jobs", json={"task": EXPORT, "payload": payload}, headers=auth(key))


async def export(api: httpx.AsyncClient, infra: Infra, key: str, **payload: Any) -> tuple[str, Any]:
    response = await post_export(api, key, **payload)
    assert response.status_code == 202, response.text
    return response.json()["id"], running.run(infra, response.json()["id"], EXPORT)


async def download(api: httpx.AsyncClient, job_id: str, key: str) -> httpx.Response:
    return await api.get(f"/api/v1/jobs/{job_id}/artifact", headers=auth(key))


def csv_rows(response: httpx.Response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(response.text)))


@pytest.fixture
def populated(clean_ledger: Infra, keys: dict[str, str]) -> dict[str, set[str]]:
    return {
        "a": seed(clean_ledger, key_id(keys["a"]), 30),
        "b": seed(clean_ledger, key_id(keys["b"]), 20),
        "operator": seed(clean_ledger, None, 5),
    }


async def test_an_enqueue_only_keys_export_holds_its_own_jobs_and_never_another_clients(
    api: httpx.AsyncClient, clean_ledger: Infra, keys: dict[str, str], populated: dict[str, set[str]]
) -> None:
    job_id, (state, result) = await export(api, clean_ledger, keys["a"], chunk_size=10)
    assert state == "succeeded", result
    ids = {row["id"] for row in csv_rows(await download(api, job_id, keys["a"]))}
    assert ids == populated["a"] | {job_id}, "A's jobs (its export among them), nothing else"
    assert not ids & populated["b"]
    assert result["rows"] == len(populated["a"]) + 1


async def test_a_read_keys_export_holds_every_job(
    api: httpx.AsyncClient, clean_ledger: Infra, keys: dict[str, str], populated: dict[str, set[str]]
) -> None:
    job_id, (state, result) = await export(api, clean_ledger, keys["reader"], task=ECHO)
    assert state == "succeeded", result
    ids = {row["id"] for row in csv_rows(await download(api, job_id, keys["reader"]))}
    assert ids == populated["a"] | populated["b"] | populated["operator"]


async def test_the_artifact_downloads_in_full_and_matches_the_rows_to_its_client_only(
    api: httpx.AsyncClient, clean_ledger: Infra, keys: dict[str, str], populated: dict[str, set[str]]
) -> None:
    job_id, (_, result) = await export(api, clean_ledger, keys["a"], task=ECHO, chunk_size=10)
    response = await download(api, job_id, keys["a"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert int(response.headers["content-length"]) == len(response.content) == result["bytes"]
    assert f'filename="jobs-{job_id}.csv"' in response.headers["content-disposition"]
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        stored = conn.execute(
            "SELECT id::text, task, state, attempts::text FROM jobs WHERE client_id = %s AND task = %s"
            " ORDER BY created_at, id",
            (key_id(keys["a"]), ECHO),
        ).fetchall()
    rows = csv_rows(response)
    assert [(r["id"], r["task"], r["state"], r["attempts"]) for r in rows] == stored
    assert (await download(api, job_id, keys["b"])).status_code == 404, "not B's job, not B's file"
    assert (await download(api, job_id, keys["reader"])).status_code == 200


async def test_a_download_of_an_export_in_many_pieces_streams_exactly_what_was_written(
    api: httpx.AsyncClient, clean_ledger: Infra, keys: dict[str, str]
) -> None:
    seed(clean_ledger, key_id(keys["a"]), 500)
    job_id, (_, result) = await export(api, clean_ledger, keys["a"], task=ECHO, chunk_size=10)
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        pieces = conn.execute(
            "SELECT content FROM job_artifact_chunks WHERE job_id = %s ORDER BY seq", (job_id,)
        ).fetchall()
        whole = conn.execute(
            "SELECT content, size FROM job_artifacts WHERE job_id = %s", (job_id,)
        ).fetchone()
    assert len(pieces) == 51, "the header, then a piece per page of ten rows"
    assert whole == (None, result["bytes"]), "kept in pieces only"
    messages = await raw_get(f"/api/v1/jobs/{job_id}/artifact", keys["a"])
    assert messages[0]["status"] == 200
    bodies = [m["body"] for m in messages[1:] if m.get("body")]
    assert b"".join(bodies) == b"".join(piece[0] for piece in pieces)
    assert len(bodies) == len(pieces), "sent piece by piece as they are read, not as one body"


async def raw_get(path: str, key: str) -> list[dict[str, Any]]:
    """The ASGI messages the application sends for a GET (httpx's ASGI transport would join the
    body's parts into one)."""
    from app.asgi import create_app

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"conveyor.test"), (b"authorization", f"Bearer {key}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("conveyor.test", 80),
    }
    sent: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await create_app()(scope, receive, send)
    return sent


async def test_an_artifact_stored_whole_before_pieces_still_downloads(
    api: httpx.AsyncClient, clean_ledger: Infra, keys: dict[str, str]
) -> None:
    [job_id] = seed(clean_ledger, key_id(keys["a"]), 1)
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO job_artifacts (job_id, name, content_type, content)"
            " VALUES (%s, 'old.csv', 'text/csv', %s)",
            (job_id, b"id\n1\n"),
        )
    response = await download(api, job_id, keys["a"])
    assert (response.status_code, response.content) == (200, b"id\n1\n")


async def test_a_second_export_of_a_client_is_409_while_its_first_is_in_flight_and_allowed_after(
    api: httpx.AsyncClient, clean_ledger: Infra, keys: dict[str, str]
) -> None:
    first = await post_export(api, keys["a"])
    assert first.status_code == 202
    first_id = first.json()["id"]
    queued = await post_export(api, keys["a"], task=ECHO)
    assert queued.status_code == 409, queued.text
    assert queued.json()["job_id"] == first_id
    assert first_id in queued.json()["detail"]
    assert "already" in queued.json()["detail"]
    ctx = running.claim(clean_ledger, first_id, EXPORT)
    while_running = await post_export(api, keys["a"])
    assert (while_running.status_code, while_running.json()["job_id"]) == (409, first_id)
    other_client = await post_export(api, keys["b"])
    assert other_client.status_code == 202, "another client exports at the same time"
    assert running.finish(ctx)[0] == "succeeded"
    after = await post_export(api, keys["a"])
    assert after.status_code == 202, after.text
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        count = conn.execute("SELECT count(*) FROM jobs WHERE task = %s", (EXPORT,)).fetchone()
    assert count == (3,), "the refused ones stored nothing"


async def test_concurrent_exports_of_one_client_make_one_job_and_the_jobs_batched_with_them_are_stored(
    api: httpx.AsyncClient, clean_ledger: Infra, keys: dict[str, str]
) -> None:
    exports = [post_export(api, keys["a"]) for _ in range(10)]
    echoes = [
        api.post("/api/v1/jobs", json={"task": ECHO, "payload": {"message": "m"}}, headers=auth(keys["a"]))
        for _ in range(10)
    ]
    answers = await asyncio.gather(*exports, *echoes)
    export_codes = sorted(a.status_code for a in answers[:10])
    assert export_codes == [202] + [409] * 9
    assert [a.status_code for a in answers[10:]] == [202] * 10
    accepted = next(a.json()["id"] for a in answers[:10] if a.status_code == 202)
    assert {a.json()["job_id"] for a in answers[:10] if a.status_code == 409} == {accepted}


async def test_an_idempotent_repeat_of_an_export_in_flight_returns_the_first_job(
    api: httpx.AsyncClient, clean_ledger: Infra, keys: dict[str, str]
) -> None:
    headers = {**auth(keys["a"]), "Idempotency-Key": "export-1"}
    body = {"task": EXPORT, "payload": {}}
    first = await api.post("/api/v1/jobs", json=body, headers=headers)
    again = await api.post("/api/v1/jobs", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await api.post(
        "/api/v1/jobs", json=body, headers={**auth(keys["a"]), "Idempotency-Key": "export-2"}
    )
    assert (other.status_code, other.json()["job_id"]) == (409, first.json()["id"])


async def test_an_export_enqueued_from_python_for_a_client_is_held_to_one_as_well(
    clean_ledger: Infra, keys: dict[str, str]
) -> None:
    client = key_id(keys["a"])
    first = export_jobs.enqueue_sync({}, client_id=client)
    with pytest.raises(AlreadyInFlight) as refused:
        export_jobs.enqueue_sync({"task": ECHO}, client_id=client)
    assert refused.value.job_id == first.id
    with pytest.raises(AlreadyInFlight):
        await export_jobs.enqueue({}, client_id=client)
    assert export_jobs.enqueue_sync({}).id != first.id, "an operator's export is not held back"
    assert export_jobs.enqueue_sync({}).id != first.id


async def test_the_export_of_a_revoked_key_fails_for_good_and_exports_nothing(
    api: httpx.AsyncClient, clean_ledger: Infra, keys: dict[str, str], populated: dict[str, set[str]]
) -> None:
    response = await post_export(api, keys["a"])
    assert response.status_code == 202
    revoke_key(keys["a-name"])
    state, error = running.run(clean_ledger, response.json()["id"], EXPORT)
    assert state == "dead"
    assert "revoked" in error
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        job = conn.execute(
            "SELECT state, last_error FROM jobs WHERE id = %s", (response.json()["id"],)
        ).fetchone()
        files = conn.execute("SELECT count(*) FROM job_artifacts").fetchone()
        pieces = conn.execute("SELECT count(*) FROM job_artifact_chunks").fetchone()
    assert job is not None
    assert job[0] == "dead"
    assert "revoked" in job[1]
    assert files == pieces == (0,)


def kill(infra: Infra, job_id: str) -> None:
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET state = 'dead', finished_at = now() WHERE id = %s", (job_id,))


async def test_a_dead_export_is_not_replayed_while_its_client_has_another_in_flight(
    api: httpx.AsyncClient, clean_ledger: Infra, keys: dict[str, str]
) -> None:
    dead = (await post_export(api, keys["a"])).json()["id"]
    kill(clean_ledger, dead)
    in_flight = (await post_export(api, keys["a"])).json()["id"]
    refused = await api.post(f"/api/v1/jobs/{dead}/replay")
    assert refused.status_code == 409, refused.text
    assert refused.json()["job_id"] == in_flight
    kill(clean_ledger, in_flight)
    replayed = await api.post(f"/api/v1/jobs/{dead}/replay")
    assert replayed.status_code == 202, replayed.text


async def test_replaying_every_dead_export_replays_one_per_client(
    api: httpx.AsyncClient, clean_ledger: Infra, keys: dict[str, str]
) -> None:
    from app.ledger.engines import async_engine
    from app.operate import actions

    made = []
    for key in (keys["a"], keys["a"], keys["b"]):
        job_id = (await post_export(api, key)).json()["id"]
        kill(clean_ledger, job_id)
        made.append(job_id)
    done = await actions.bulk(async_engine(), "replay", task=EXPORT, up_to=10)
    assert {str(run.id) for run in done} in ({made[0], made[2]}, {made[1], made[2]})
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        states = dict(conn.execute("SELECT id::text, state FROM jobs WHERE task = %s", (EXPORT,)).fetchall())
    assert sorted(states.values()) == ["dead", "queued", "queued"], "one of A's stays dead, nothing failed"
