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
FLAKY = "app.tasks.example.flaky"
SLEEP = "app.tasks.example.sleep"
EXPORT = "app.tasks.example.export_jobs"
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
    # Strict JSON types: no bool for an integer, no string for a number.
    ("a bool for the priority", job(priority=False), ["body", "priority"]),
    ("a string for the delay", job(delay_seconds="5"), ["body", "delay_seconds"]),
    ("a fraction for the delay", job(delay_seconds=1.5), ["body", "delay_seconds"]),
    (
        "a bool for an integer payload field",
        job(task=FLAKY, payload={"fail_times": True}),
        ["body", "payload", "fail_times"],
    ),
    (
        "a string for a number payload field",
        job(task=SLEEP, payload={"seconds": "5"}),
        ["body", "payload", "seconds"],
    ),
    ("a number for a string payload field", job(payload={"message": 5}), ["body", "payload", "message"]),
    # PostgreSQL stores no NUL character: refused at the door, naming where it was.
    ("a NUL in a payload string", job(payload={"message": "a\u0000b"}), ["body", "payload", "message"]),
    (
        "a NUL in a nested payload string",
        job(task=EXPORT, payload={"task": "x\u0000"}),
        ["body", "payload", "task"],
    ),
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
    # A subject is one header line: whatever breaks a line would split the header (or add one).
    *(
        (
            f"a subject with {name}",
            {"to": "a@example.com", "subject": f"Hi{char}Bcc: x@example.com", "body": "b"},
            ["body", "subject"],
        )
        for name, char in (
            ("CR LF", "\r\n"),
            ("LF", "\n"),
            ("U+2028", "\u2028"),
            ("a vertical tab", "\x0b"),
            ("NEL", "\x85"),
            ("a file separator", "\x1c"),
        )
    ),
    (
        "a recipient with CR LF",
        {"to": "a@example.com\r\nBcc: x@example.com", "subject": "s", "body": "b"},
        ["body", "to"],
    ),
    ("a NUL in the body", {"to": "a@example.com", "subject": "s", "body": "a\u0000"}, ["body", "body"]),
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


async def test_an_integer_past_64_bits_anywhere_in_a_payload_is_a_422_not_a_500(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    body = (
        b'{"task": "app.tasks.example.export_jobs", "payload": {"task": {"n": [-14043975374808906105418]}}}'
    )
    response = await api.post("/api/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "payload"]
    assert count_jobs(clean_ledger) == 0
