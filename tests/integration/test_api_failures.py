"""I4 and I5 at the door: unstorable query and form strings, a database that is away, a row the
database refuses in a shared batch, and the unforeseen: every answer is JSON and honest."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from app.settings import get_settings
from tests.integration.conftest import count_jobs
from tests.support.infra import Infra, free_port
from tests.support.keys import auth

pytestmark = pytest.mark.anyio

ECHO = "app.tasks.example.echo"
SAME_ORIGIN = {"origin": "http://conveyor.test", "sec-fetch-site": "same-origin"}


@pytest.fixture
def database_away(monkeypatch: pytest.MonkeyPatch, infra: Infra) -> Iterator[None]:
    """Settings whose database refuses every connection (nothing listens on its port)."""
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/conveyor")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
async def unreachable_api(database_away: None) -> AsyncIterator[httpx.AsyncClient]:
    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines

    application = create_app()
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://conveyor.test", headers=auth()
    ) as client:
        yield client
    intake = getattr(application.state, "intake", None)
    if intake is not None:
        await intake.close()
    await dispose_async_engines()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/jobs?task=%00",
        "/api/v1/jobs?cursor=a%00b",
        "/dashboard/jobs?task=%00",
        "/dashboard/dead?cursor=%00",
        "/dashboard/fragments/jobs?task=x%00",
    ],
)
async def test_a_nul_in_a_query_string_is_a_422(api: httpx.AsyncClient, path: str) -> None:
    response = await api.get(path)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    assert "NUL" in str(response.json()["detail"])


async def test_a_nul_in_a_dashboard_form_is_a_422_and_nothing_changes(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    response = await api.post(
        "/dashboard/dead/bulk",
        content=b"action=discard&confirm=yes&task=%00",
        headers={**SAME_ORIGIN, "content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 422, response.text
    assert "NUL" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", f"/api/v1/jobs/{uuid.uuid4()}", None),
        ("GET", "/api/v1/jobs", None),
        ("GET", f"/api/v1/jobs/{uuid.uuid4()}/attempts", None),
        ("POST", "/api/v1/jobs", {"task": ECHO, "payload": {"message": "hi"}}),
        ("POST", "/api/v1/emails", {"to": "a@example.com", "subject": "s", "body": "b"}),
        ("POST", f"/api/v1/jobs/{uuid.uuid4()}/replay", None),
        ("POST", f"/api/v1/jobs/{uuid.uuid4()}/cancel", None),
    ],
)
async def test_a_database_that_is_away_is_a_json_503_with_retry_after(
    unreachable_api: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    response = await unreachable_api.request(method, path, json=body)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["retry-after"]) >= 1
    assert "unavailable" in response.json()["detail"]


async def test_a_keyed_post_to_a_database_that_is_away_is_a_json_503(
    unreachable_api: httpx.AsyncClient,
) -> None:
    response = await unreachable_api.post(
        "/api/v1/jobs", json={"task": ECHO, "payload": {"message": "hi"}}, headers={"idempotency-key": "k-1"}
    )
    assert response.status_code == 503, response.text
    assert "retry-after" in response.headers


@pytest.mark.parametrize(
    "path", ["/api/v1/jobs/not-a-uuid", "/api/v1/jobs?limit=0", "/api/v1/jobs?state=sleeping"]
)
async def test_bad_input_is_a_422_even_while_the_database_is_away(
    unreachable_api: httpx.AsyncClient, path: str
) -> None:
    response = await unreachable_api.get(path)
    assert response.status_code == 422, response.text


async def test_an_unforeseen_error_is_a_json_500_with_a_request_id_logged_once(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.api import failures
    from app.operate import reads

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug the handlers do not know")

    logged: list[tuple[str, dict[str, Any]]] = []

    class Recorder:
        def exception(self, event: str, **context: Any) -> None:
            logged.append((event, context))

    monkeypatch.setattr(reads, "get", broken)
    monkeypatch.setattr(failures, "log", Recorder())
    # The ASGI transport raises what the application lets through: nothing may get past.
    response = await api.get(f"/api/v1/jobs/{uuid.uuid4()}", headers={"x-request-id": "trace-42"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == "trace-42"
    assert response.json()["request_id"] == "trace-42"
    assert [event for event, _ in logged] == ["request failed"], "logged once"
    assert logged[0][1]["path"].startswith("/api/v1/jobs/")


async def test_every_answer_carries_a_request_id(api: httpx.AsyncClient) -> None:
    first = await api.get("/health/live")
    second = await api.get("/health/live")
    assert len(first.headers["x-request-id"]) >= 16
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    unsafe = await api.get("/health/live", headers={"x-request-id": "a b<script>"})
    assert unsafe.headers["x-request-id"] != "a b<script>", (
        "a client's id is kept only when it is a plain token"
    )


async def test_a_row_the_database_refuses_fails_alone_in_a_shared_batch(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    """Concurrent POSTs share one INSERT; a trigger refuses the marked rows. Every other request
    still gets its 202, and only the marked ones fail (a JSON 500: the server refused them)."""
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        conn.execute(
            """
            CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.payload->>'message' = 'refuse me' THEN RAISE EXCEPTION 'refused (test)'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_marked BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION refuse_marked();
            """
        )
    try:
        messages = ["refuse me" if i % 10 == 0 else f"fine {i}" for i in range(60)]
        responses = await asyncio.gather(
            *(api.post("/api/v1/jobs", json={"task": ECHO, "payload": {"message": m}}) for m in messages)
        )
    finally:
        with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER refuse_marked ON jobs; DROP FUNCTION refuse_marked()")
    codes = [
        (message == "refuse me", response.status_code)
        for message, response in zip(messages, responses, strict=True)
    ]
    assert {code for marked, code in codes if not marked} == {202}
    assert {code for marked, code in codes if marked} == {500}, [
        r.text for r in responses if r.status_code != 202
    ]
    assert all(r.headers["content-type"] == "application/json" for r in responses)
    assert count_jobs(clean_ledger) == 54


async def test_a_full_intake_queue_answers_503_at_once(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.accept.intake import Intake

    monkeypatch.setattr(Intake, "max_pending", 0, raising=False)
    monkeypatch.setattr(Intake, "__init__", _intake_with_no_room(Intake.__init__))
    response = await api.post("/api/v1/jobs", json={"task": ECHO, "payload": {"message": "hi"}})
    assert response.status_code == 503
    assert "retry-after" in response.headers


def _intake_with_no_room(init: Any) -> Any:
    def patched(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.max_pending = 0

    return patched
