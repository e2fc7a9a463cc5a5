"""I6: only the holder of a key gets in, and a key does only what its scopes allow.

Every route but the two health checks, asked with no key, an unknown key, a revoked key and a
key without the route's scope: 401 (with WWW-Authenticate) or 403, JSON, and nothing changed.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from app.cli.commands import cli
from app.settings import get_settings
from tests.integration.conftest import bearer, count_jobs
from tests.support.infra import Infra
from tests.support.keys import make_key, revoke_key

pytestmark = pytest.mark.anyio

ECHO = "app.tasks.example.echo"
A_JOB = {"task": ECHO, "payload": {"message": "hi"}}
ID = "00000000-0000-4000-8000-000000000000"
# (method, path, body, the scopes any one of which lets a request in)
ROUTES: list[tuple[str, str, dict[str, Any] | None, set[str]]] = [
    ("POST", "/api/v1/jobs", A_JOB, {"enqueue"}),
    ("POST", "/api/v1/emails", {"to": "a@example.com", "subject": "s", "body": "b"}, {"enqueue"}),
    ("POST", "/api/v1/jobs/batch", {"jobs": [A_JOB]}, {"enqueue"}),
    ("GET", "/api/v1/jobs", None, {"read", "enqueue"}),
    ("GET", f"/api/v1/jobs/{ID}", None, {"read", "enqueue"}),
    ("GET", f"/api/v1/jobs/{ID}/attempts", None, {"read", "enqueue"}),
    ("GET", f"/api/v1/jobs/{ID}/artifact", None, {"read", "enqueue"}),
    ("GET", "/api/v1/tasks", None, {"read", "enqueue"}),
    # A cursor of no kept event: a key that may follow gets a 410 instead of an endless stream.
    ("GET", "/api/v1/events?after=1-1", None, {"read", "enqueue"}),
    ("POST", f"/api/v1/jobs/{ID}/replay", None, {"operate"}),
    ("POST", f"/api/v1/jobs/{ID}/cancel", None, {"operate"}),
    ("POST", "/api/v1/schedules", {**A_JOB, "name": "nightly", "every_seconds": 60}, {"operate"}),
    ("GET", "/api/v1/schedules", None, {"read", "operate"}),
    ("GET", "/api/v1/schedules/nightly", None, {"read", "operate"}),
    ("POST", "/api/v1/schedules/nightly/pause", None, {"operate"}),
    ("POST", "/api/v1/schedules/nightly/resume", None, {"operate"}),
    ("DELETE", "/api/v1/schedules/nightly", None, {"operate"}),
    ("GET", "/api/v1/audit", None, {"operate"}),
    ("POST", "/api/v1/workflows", {"name": "w", "steps": {"a": A_JOB}}, {"enqueue"}),
    ("GET", "/api/v1/workflows", None, {"read", "enqueue"}),
    ("GET", f"/api/v1/workflows/{ID}", None, {"read", "enqueue"}),
    ("POST", f"/api/v1/workflows/{ID}/cancel", None, {"operate", "enqueue"}),
    ("GET", "/api/v1/queues", None, {"read", "operate"}),
    ("POST", "/api/v1/queues/default/pause", None, {"operate"}),
    ("POST", "/api/v1/queues/default/resume", None, {"operate"}),
    ("POST", "/api/v1/webhooks", {"url": "http://127.0.0.1:9/", "events": ["job.dead"]}, {"operate"}),
    ("GET", "/api/v1/webhooks", None, {"read", "operate"}),
    ("GET", f"/api/v1/webhooks/{ID}", None, {"read", "operate"}),
    ("DELETE", f"/api/v1/webhooks/{ID}", None, {"operate"}),
    ("GET", f"/api/v1/webhooks/{ID}/deliveries", None, {"read", "operate"}),
    ("POST", f"/api/v1/webhooks/{ID}/deliveries/1/replay", None, {"operate"}),
    ("GET", "/metrics", None, {"metrics"}),
    ("GET", "/openapi.json", None, {"read"}),
    ("GET", "/docs", None, {"read"}),
]
SCOPES = ("enqueue", "read", "operate", "metrics")


def ids(route: tuple[str, str, Any, Any]) -> str:
    return f"{route[0]} {route[1].replace(ID, '{id}')}"


@pytest.mark.parametrize("route", ROUTES, ids=ids)
async def test_every_route_without_a_valid_key_is_401_and_changes_nothing(
    anonymous: httpx.AsyncClient, clean_ledger: Infra, route: tuple[str, str, dict[str, Any] | None, set[str]]
) -> None:
    method, path, body, _ = route
    revoked = make_key(SCOPES, name=f"revoked-{uuid.uuid4().hex[:6]}")
    revoke_key(revoked_name(revoked, clean_ledger))
    unknown = "cvk_0123456789ab_" + "x" * 43
    for headers in (
        {},
        bearer(unknown),
        bearer(revoked),
        bearer("not a key"),
        {"authorization": "Basic abc"},
    ):
        response = await anonymous.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.headers["content-type"] == "application/json"
        assert response.json()["detail"]
    assert count_jobs(clean_ledger) == 0


@pytest.mark.parametrize("route", ROUTES, ids=ids)
async def test_every_route_refuses_a_key_without_its_scope_with_403(
    anonymous: httpx.AsyncClient, clean_ledger: Infra, route: tuple[str, str, dict[str, Any] | None, set[str]]
) -> None:
    method, path, body, allowed = route
    for scope in sorted(set(SCOPES) - allowed):
        response = await anonymous.request(method, path, json=body, headers=bearer(make_key([scope])))
        assert response.status_code == 403, (scope, response.text)
        assert "scope" in response.json()["detail"]
    for scope in sorted(allowed):
        response = await anonymous.request(method, path, json=body, headers=bearer(make_key([scope])))
        assert response.status_code not in {401, 403}, (scope, response.text)
    creates_jobs = method == "POST" and path in {
        "/api/v1/jobs",
        "/api/v1/emails",
        "/api/v1/jobs/batch",
        "/api/v1/workflows",
    }
    assert count_jobs(clean_ledger) == (len(allowed) if creates_jobs else 0), "refused keys created nothing"


def test_every_route_of_the_api_is_in_the_matrix() -> None:
    from app.asgi import create_app

    listed = {
        (method, re.sub(r"/(" + ID + r"|nightly|default|1)(?=/|$)", "/{}", path.split("?")[0]))
        for method, path, *_ in ROUTES
    }
    served = {
        (method.upper(), re.sub(r"\{[a-z_]+\}", "{}", path))
        for path, operations in create_app().openapi()["paths"].items()
        if path.startswith("/api/")
        for method in operations
    }
    assert len(served) > 10
    assert served - listed == set(), "a route whose keys no test checks"


def revoked_name(key: str, infra: Infra) -> str:
    key_id = key.split("_")[1]
    with psycopg.connect(infra.libpq_url) as conn:
        row = conn.execute("SELECT name FROM api_keys WHERE id = %s", (key_id,)).fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("path", ["/health/live", "/health/ready"])
async def test_the_health_checks_need_no_key(anonymous: httpx.AsyncClient, path: str) -> None:
    response = await anonymous.get(path)
    assert response.status_code in {200, 503}
    assert "www-authenticate" not in response.headers


async def test_an_enqueue_key_reads_only_its_own_jobs_and_a_read_key_every_job(
    anonymous: httpx.AsyncClient,
) -> None:
    a, b, reader = make_key(["enqueue"]), make_key(["enqueue"]), make_key(["read"])
    job_id = (await anonymous.post("/api/v1/jobs", json=A_JOB, headers=bearer(a))).json()["id"]
    assert (await anonymous.get(f"/api/v1/jobs/{job_id}", headers=bearer(a))).status_code == 200
    for path in (f"/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job_id}/attempts"):
        refused = await anonymous.get(path, headers=bearer(b))
        assert refused.status_code == 404, "another client's job does not exist for this key"
    assert (await anonymous.get("/api/v1/jobs", headers=bearer(b))).json()["items"] == []
    assert [j["id"] for j in (await anonymous.get("/api/v1/jobs", headers=bearer(a))).json()["items"]] == [
        job_id
    ]
    seen = await anonymous.get(f"/api/v1/jobs/{job_id}", headers=bearer(reader))
    assert seen.status_code == 200
    assert seen.json()["client_id"] == a.split("_")[1], "the job records the key that made it"


async def test_one_idempotency_key_from_two_clients_makes_two_jobs(
    anonymous: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    a, b = make_key(["enqueue"]), make_key(["enqueue"])
    headers = {"idempotency-key": "order-42"}
    first = await anonymous.post("/api/v1/jobs", json=A_JOB, headers={**headers, **bearer(a)})
    again = await anonymous.post("/api/v1/jobs", json=A_JOB, headers={**headers, **bearer(a)})
    other = await anonymous.post("/api/v1/jobs", json=A_JOB, headers={**headers, **bearer(b)})
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert other.json()["id"] != first.json()["id"], "client B's key is not client A's"
    different = await anonymous.post(
        "/api/v1/jobs", json={**A_JOB, "payload": {"message": "other"}}, headers={**headers, **bearer(b)}
    )
    assert different.status_code == 422, "B reusing B's own key for another job"
    assert count_jobs(clean_ledger) == 2


@pytest.fixture
def tight_rate(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RATE_LIMIT", "5/minute")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


async def test_a_burst_past_the_rate_limit_is_429_with_retry_after_and_spares_other_clients(
    tight_rate: None, anonymous: httpx.AsyncClient
) -> None:
    busy, quiet = make_key(["read"]), make_key(["read"])
    answers = await asyncio.gather(*(anonymous.get("/api/v1/tasks", headers=bearer(busy)) for _ in range(8)))
    codes = sorted(response.status_code for response in answers)
    assert codes == [200] * 5 + [429] * 3
    limited = next(response for response in answers if response.status_code == 429)
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert "rate limit" in limited.json()["detail"]
    assert (await anonymous.get("/api/v1/tasks", headers=bearer(quiet))).status_code == 200


async def test_a_revoked_key_stops_working_within_the_cache_period(anonymous: httpx.AsyncClient) -> None:
    name = f"short-lived-{uuid.uuid4().hex[:6]}"
    key = make_key(["read"], name=name)
    assert (await anonymous.get("/api/v1/tasks", headers=bearer(key))).status_code == 200
    revoke_key(name)
    await asyncio.sleep(get_settings().keys_cache_seconds + 0.1)
    assert (await anonymous.get("/api/v1/tasks", headers=bearer(key))).status_code == 401


async def test_the_openapi_document_declares_the_bearer_scheme_and_the_health_checks_as_open(
    anonymous: httpx.AsyncClient,
) -> None:
    document = (await anonymous.get("/openapi.json", headers=bearer(make_key(["read"])))).json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert document["security"] == [{"bearer": []}]
    assert document["paths"]["/health/live"]["get"]["security"] == []
    assert document["paths"]["/health/ready"]["get"]["security"] == [{}, {"bearer": []}], "a key is optional"
    for status in ("401", "403", "429", "503"):
        assert status in document["paths"]["/api/v1/jobs"]["post"]["responses"]


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    database_url, broker_url = get_settings().database_url, get_settings().broker_url
    monkeypatch.setenv("DATABASE_URL", database_url.replace("postgres@", "postgres:not-dev@"))
    monkeypatch.setenv("BROKER_URL", broker_url.replace("guest:guest@", "guest:not-dev@"))
    monkeypatch.setenv("KEYS_SECRET", "a production secret, long enough for the check")
    monkeypatch.setenv("ENVIRONMENT", "production")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_production_turns_the_docs_off_unless_asked_for(
    production: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.asgi import create_app

    paths = {getattr(route, "path", None) for route in create_app().routes}
    assert "/docs" not in paths
    assert "/openapi.json" not in paths
    monkeypatch.setenv("API_DOCS", "true")
    get_settings.cache_clear()
    assert "/docs" in {getattr(route, "path", None) for route in create_app().routes}


def test_production_refuses_the_development_passwords_and_a_short_keys_secret() -> None:
    from pydantic import SecretStr, ValidationError

    from app.settings import Settings

    with pytest.raises(ValidationError, match="DATABASE_URL has no password or a development one"):
        Settings(environment="production")
    passwords = {
        "database_url": "postgresql+psycopg://conveyor:not-dev@db/conveyor",
        "broker_url": "amqp://conveyor:not-dev@mq:5672/",
    }
    with pytest.raises(ValidationError, match="KEYS_SECRET is shorter than 32 characters"):
        Settings(environment="production", keys_secret=SecretStr("short"), **passwords)
    published = SecretStr("conveyor-development-keys-secret-change-me")
    with pytest.raises(ValidationError, match="KEYS_SECRET is a value published"):
        Settings(environment="production", keys_secret=published, **passwords)
    generated = Settings(environment="production", keys_secret=SecretStr(""), **passwords)
    assert generated.keys_secret.get_secret_value() == "", "no KEYS_SECRET: the ledger's pepper is used"
    Settings(environment="production", keys_secret=SecretStr("x" * 32), **passwords)


def test_keys_create_prints_the_key_last_and_list_never_shows_it(clean_ledger: Infra) -> None:
    runner = CliRunner()
    created = runner.invoke(cli, ["keys", "create", "ci-robot", "--scopes", "enqueue,read"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("cvk_")
    listed = runner.invoke(cli, ["keys", "list"])
    assert "ci-robot" in listed.stdout
    assert "enqueue,read" in listed.stdout
    assert key not in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        stored = conn.execute("SELECT secret_hash FROM api_keys WHERE name = 'ci-robot'").fetchone()
    assert stored is not None
    assert key.split("_", 2)[2] not in stored[0], "only a hash is stored"
    assert runner.invoke(cli, ["keys", "create", "ci-robot"]).exit_code == 1, "a name is taken once"
    assert runner.invoke(cli, ["keys", "create", "x", "--scopes", "everything"]).exit_code == 2
    assert runner.invoke(cli, ["keys", "revoke", "ci-robot"]).exit_code == 0
    assert runner.invoke(cli, ["keys", "revoke", "ci-robot"]).exit_code == 1, "already revoked"


async def test_concurrent_requests_with_a_key_not_yet_remembered_look_it_up_once(clean_ledger: Infra) -> None:
    """50 requests of one client at once, cold cache: one read of the key and one write of its
    last use, not 50 (which queued on the key row's lock each time the entry expired)."""
    from contextlib import asynccontextmanager

    from app.access.keys import Verifier
    from app.api.deps import reading
    from app.errors import Unauthenticated

    key = make_key(["enqueue"])
    opened = 0

    @asynccontextmanager
    async def counting() -> AsyncIterator[Any]:
        nonlocal opened
        opened += 1
        async with reading() as conn:
            await asyncio.sleep(0.05)  # a slow ledger: the others arrive while it is read
            yield conn

    verifier = Verifier(ttl=60)
    await verifier.load_pepper(reading)
    clients = await asyncio.gather(*(verifier.verify(key, counting) for _ in range(50)))
    assert opened == 1
    assert {client.key_id for client in clients} == {clients[0].key_id}

    # A failed lookup is shared by the requests that waited for it, and remembered: asking
    # again reaches no database, whether the key id exists (a wrong secret) or not.
    forged = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
    failures = await asyncio.gather(
        *(verifier.verify(forged, counting) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(failure, Unauthenticated) for failure in failures), failures
    assert opened == 2
    with pytest.raises(Unauthenticated):
        await verifier.verify(forged, counting)
    assert opened == 2
    unknown = "cvk_0123456789ab_" + key[-43:]
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await verifier.verify(unknown, counting)
    with pytest.raises(Unauthenticated):
        await verifier.verify("cvk_0123456789ab_" + forged[-43:], counting)
    assert opened == 3, "an unknown key id is remembered, whatever secret comes with it"
    forgetful = Verifier(ttl=60, refusal_ttl=0)
    await forgetful.load_pepper(reading)
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await forgetful.verify(forged, counting)
    assert opened == 5


async def test_a_key_in_use_shows_when_it_was_last_used(anonymous: httpx.AsyncClient) -> None:
    from sqlalchemy import text

    from app.ledger.engines import sync_engine

    name = f"used-{uuid.uuid4().hex[:6]}"
    key = make_key(["read"], name=name)
    assert (await anonymous.get("/api/v1/tasks", headers=bearer(key))).status_code == 200
    with sync_engine().connect() as conn:
        used = conn.execute(
            text("SELECT last_used_at FROM api_keys WHERE name = :n"), {"n": name}
        ).scalar_one()
    assert used is not None, "`conveyor keys list` would show the key as never used"
