"""I4: bad input stops at the door with a 4xx naming the problem, and nothing is stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import count_jobs
from tests.support.infra import Infra

pytestmark = pytest.mark.anyio

ECHO = "app.tasks.example.echo"
JSON = {"content-type": "application/json"}


def job(**overrides: Any) -> dict[str, Any]:
    return {"task": ECHO, "payload": {"message": "hi"}, **overrides}


BAD_JOBS: list[tuple[str, dict[str, Any], list[str | int]]] = [
    ("unknown task", job(task="app.tasks.example.nope"), ["body", "task"]),
    ("payload field missing", job(payload={}), ["body", "payload", "message"]),
    ("payload field of the wrong type", job(payload={"message": ["a"]}), ["body", "payload", "message"]),
    ("payload field not declared", job(payload={"message": "hi", "x": 1}), ["body", "payload", "x"]),
    ("request field not declared", job(colour="red"), ["body", "colour"]),
    ("negative delay", job(delay_seconds=-1), ["body", "delay_seconds"]),
    ("priority out of range", job(priority=10), ["body", "priority"]),
    ("task missing", {"payload": {"message": "hi"}}, ["body", "task"]),
    ("payload not an object", job(payload=[1, 2]), ["body", "payload"]),
]


@pytest.mark.parametrize(("case", "body", "loc"), BAD_JOBS, ids=[c[0] for c in BAD_JOBS])
async def test_an_invalid_job_gets_422_naming_the_field_and_stores_nothing(
    api: httpx.AsyncClient, clean_ledger: Infra, case: str, body: dict[str, Any], loc: list[Any]
) -> None:
    response = await api.post("/api/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(error["loc"] == loc for error in errors), errors
    assert all(error["msg"] for error in errors)
    assert count_jobs(clean_ledger) == 0


BAD_EMAILS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("not an address", {"to": "nobody", "subject": "s", "body": "b"}, ["body", "to"]),
    ("subject missing", {"to": "a@example.com", "body": "b"}, ["body", "subject"]),
    ("extra field", {"to": "a@example.com", "subject": "s", "body": "b", "cc": "x"}, ["body", "cc"]),
]


@pytest.mark.parametrize(("case", "body", "loc"), BAD_EMAILS, ids=[c[0] for c in BAD_EMAILS])
async def test_an_invalid_email_gets_422_naming_the_field_and_stores_nothing(
    api: httpx.AsyncClient, clean_ledger: Infra, case: str, body: dict[str, Any], loc: list[str]
) -> None:
    response = await api.post("/api/v1/emails", json=body)
    assert response.status_code == 422, response.text
    assert any(error["loc"] == loc for error in response.json()["detail"])
    assert count_jobs(clean_ledger) == 0


async def test_malformed_json_gets_400_and_stores_nothing(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    response = await api.post("/api/v1/jobs", content=b'{"task": "x", ', headers=JSON)
    assert response.status_code == 400
    assert response.json()["detail"].startswith("malformed JSON")
    assert count_jobs(clean_ledger) == 0


async def test_a_body_that_is_not_json_gets_415_and_stores_nothing(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    response = await api.post("/api/v1/jobs", content=b"task=echo", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert count_jobs(clean_ledger) == 0


async def test_an_oversized_body_gets_413_and_stores_nothing(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    big = job(payload={"message": "x" * 1_100_000})
    response = await api.post("/api/v1/jobs", json=big)
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    assert count_jobs(clean_ledger) == 0


async def test_an_oversized_chunked_body_gets_413_and_stores_nothing(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"task": "app.tasks.example.echo", "payload": {"message": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}}'

    response = await api.post("/api/v1/jobs", content=body(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert count_jobs(clean_ledger) == 0


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=201", "state=lost", "cursor=bm9waXBl"], ids=lambda q: q.split("=")[0]
)
async def test_a_list_query_out_of_range_gets_422(api: httpx.AsyncClient, query: str) -> None:
    response = await api.get(f"/api/v1/jobs?{query}")
    assert response.status_code == 422, response.text


async def test_every_error_answer_of_the_post_routes_is_documented(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()
    for path in ("/api/v1/jobs", "/api/v1/emails"):
        documented = set(schema["paths"][path]["post"]["responses"])
        assert {"202", "400", "413", "415", "422"} <= documented, (path, documented)
