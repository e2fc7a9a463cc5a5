"""Refusals cost little: requests without a valid key are throttled per address before any key
lookup, refused keys are remembered briefly, the sign-in form likewise, and a client with a
good key pays for none of it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest
import structlog

from app.settings import get_settings
from tests.support.infra import Infra
from tests.support.keys import make_key, revoke_key

pytestmark = pytest.mark.anyio

BASE = "http://conveyor.test"
FLOODER = "198.51.100.7"
NEIGHBOUR = "198.51.100.8"


@pytest.fixture
def default_refusal_limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The shipped refusal budgets (the suite's environment raises them for its own tests)."""
    monkeypatch.delenv("REFUSAL_LIMIT_PER_ADDRESS")
    monkeypatch.delenv("REFUSAL_LIMIT_GLOBAL")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
async def app(clean_ledger: Infra, default_refusal_limits: None) -> AsyncIterator[Any]:
    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines

    yield create_app()
    await dispose_async_engines()


def client_from(app: Any, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url=BASE)


def unknown_key() -> str:
    return f"cvk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


async def transactions(infra: Infra) -> int:
    """Transactions the test's database has finished (committed or rolled back), once every
    connection of this process is closed: a backend reports its counts when it exits."""
    from app.ledger.engines import dispose_async_engines, dispose_sync_engines

    await dispose_async_engines()
    dispose_sync_engines()
    seen: list[int] = []
    # Each reading is a transaction of its own, counted by the next: the count is settled when
    # two readings in a row add only that.
    while len(seen) < 3 or not seen[-1] - seen[-2] == seen[-2] - seen[-3] <= 2:
        await asyncio.sleep(0.3)
        with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
        assert row is not None
        seen.append(int(row[0]))
    return seen[-1]


async def test_three_hundred_unknown_keys_from_one_address_are_429_and_barely_reach_the_database(
    app: Any, clean_ledger: Infra
) -> None:
    budget = 30  # REFUSAL_LIMIT_PER_ADDRESS's default, per minute
    async with client_from(app, FLOODER) as warm:  # the process reads its pepper once, first
        assert (
            await warm.get("/api/v1/tasks", headers={"authorization": "Bearer nonsense"})
        ).status_code == 401
    before = await transactions(clean_ledger)
    async with client_from(app, FLOODER) as flooder:
        answers = await asyncio.gather(
            *(
                flooder.get("/api/v1/tasks", headers={"authorization": f"Bearer {unknown_key()}"})
                for _ in range(300)
            )
        )
    spent = await transactions(clean_ledger) - before
    codes = [answer.status_code for answer in answers]
    assert set(codes) == {401, 429}
    assert codes.count(401) <= budget
    assert codes.count(429) >= 300 - budget
    limited = next(answer for answer in answers if answer.status_code == 429)
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert "refused requests" in limited.json()["detail"]
    # A lookup is two transactions (the pool's ping, the read); opening the pool's connections
    # adds a few. Unthrottled, the 300 made well over 600.
    assert spent <= 3 * budget, f"{spent} transactions for 300 unknown keys"

    async with client_from(app, NEIGHBOUR) as neighbour:
        assert (
            await neighbour.get("/api/v1/tasks", headers={"authorization": f"Bearer {unknown_key()}"})
        ).status_code == 401, "another address has its own budget"


async def test_one_unknown_key_asked_again_and_again_is_looked_up_once(app: Any, clean_ledger: Infra) -> None:
    from app.access.keys import Verifier

    key = unknown_key()
    looked_up: list[str] = []
    async with client_from(app, FLOODER) as client:
        await client.get("/api/v1/tasks", headers={"authorization": "Bearer nonsense"})
        verifier: Verifier = app.state.verifier
        original = verifier._look_up

        async def counted(conn: Any, key_id: str, secret: str, entry: str) -> Any:
            looked_up.append(key_id)
            return await original(conn, key_id, secret, entry)

        # Counted at the lookup itself (a connection from the pool and a read each), not by the
        # database's transactions, which other processes on the machine can add to.
        verifier._look_up = counted  # type: ignore[method-assign]
        for _ in range(20):
            answer = await client.get("/api/v1/tasks", headers={"authorization": f"Bearer {key}"})
            assert answer.status_code == 401
    assert len(looked_up) == 1, f"{len(looked_up)} lookups of one unknown key asked 20 times"
    assert len(verifier._refused) == 1


async def test_a_remembered_good_key_is_served_while_its_address_is_throttled(app: Any) -> None:
    good = make_key(["read"])
    async with client_from(app, FLOODER) as client:
        assert (
            await client.get("/api/v1/tasks", headers={"authorization": f"Bearer {good}"})
        ).status_code == 200
        for _ in range(31):
            await client.get("/api/v1/tasks", headers={"authorization": f"Bearer {unknown_key()}"})
        throttled = await client.get("/api/v1/tasks", headers={"authorization": f"Bearer {unknown_key()}"})
        assert throttled.status_code == 429
        assert (
            await client.get("/api/v1/tasks", headers={"authorization": f"Bearer {good}"})
        ).status_code == 200


async def test_a_good_key_whose_cache_entry_expired_is_looked_up_again_past_the_throttle(app: Any) -> None:
    """Clients behind one address (a NAT, a proxy not in FORWARDED_ALLOW_IPS) share its refusal
    budget: a flood of bad keys among them must not lock out the good keys, whose digest this
    process has seen proved. A revoked one is refused all the same."""
    name = f"shared-{secrets.token_hex(3)}"
    good = make_key(["read"], name=name)
    headers = {"authorization": f"Bearer {good}"}
    async with client_from(app, FLOODER) as client:
        assert (await client.get("/api/v1/tasks", headers=headers)).status_code == 200
        for _ in range(32):
            await client.get("/api/v1/tasks", headers={"authorization": f"Bearer {unknown_key()}"})
        throttled = await client.get("/api/v1/tasks", headers={"authorization": f"Bearer {unknown_key()}"})
        assert throttled.status_code == 429
        await asyncio.sleep(get_settings().keys_cache_seconds + 0.2)  # its cache entry expires
        assert (await client.get("/api/v1/tasks", headers=headers)).status_code == 200
        revoke_key(name)
        await asyncio.sleep(get_settings().keys_cache_seconds + 0.2)
        assert (await client.get("/api/v1/tasks", headers=headers)).status_code in (401, 429)


async def test_malformed_headers_wrong_secrets_revoked_keys_and_bad_session_cookies_are_refusals(
    clean_ledger: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines

    monkeypatch.setenv("REFUSAL_LIMIT_PER_ADDRESS", "5/minute")
    get_settings.cache_clear()
    name = f"gone-{secrets.token_hex(3)}"
    good, revoked = make_key(["read"]), make_key(["read"], name=name)
    revoke_key(name)
    wrong_secret = good[:-43] + secrets.token_urlsafe(32)
    refused = [
        {"authorization": "Basic abc"},
        {"authorization": "Bearer not-a-key"},
        {"authorization": f"Bearer {wrong_secret}"},
        {"authorization": f"Bearer {revoked}"},
        {"cookie": f"conveyor_session={secrets.token_urlsafe(32)}"},
    ]
    try:
        async with client_from(create_app(), FLOODER) as client:
            for _ in range(10):
                nothing = await client.get("/api/v1/tasks")
                assert nothing.status_code == 401, "no key at all costs no lookup and is not counted"
            for headers in refused:
                assert (await client.get("/api/v1/tasks", headers=headers)).status_code == 401, headers
            for headers in refused:
                assert (await client.get("/api/v1/tasks", headers=headers)).status_code == 429, headers
    finally:
        await dispose_async_engines()
        monkeypatch.undo()
        get_settings.cache_clear()


async def test_the_sign_in_form_is_throttled_per_address(app: Any) -> None:
    async with client_from(app, FLOODER) as flooder:
        origin = {"origin": BASE}
        codes = [
            (await flooder.post("/dashboard/login", data={"key": unknown_key()}, headers=origin)).status_code
            for _ in range(35)
        ]
        assert codes[:30] == [401] * 30
        assert codes[30:] == [429] * 5
        good = make_key(["read"])
        page = await flooder.post("/dashboard/login", data={"key": good}, headers=origin)
        assert page.status_code == 429, "not even a good key is tried while the address is throttled"
        assert int(page.headers["retry-after"]) >= 1
        assert 'name="key"' in page.text
        assert "conveyor_session" not in page.headers.get("set-cookie", "")
    async with client_from(app, NEIGHBOUR) as neighbour:
        signed_in = await neighbour.post("/dashboard/login", data={"key": good}, headers={"origin": BASE})
        assert signed_in.status_code == 303


async def test_refusals_are_logged_with_address_and_reason_and_a_throttled_address_once(app: Any) -> None:
    with structlog.testing.capture_logs() as lines:
        async with client_from(app, FLOODER) as flooder:
            for _ in range(100):
                await flooder.get("/api/v1/tasks", headers={"authorization": f"Bearer {unknown_key()}"})
    refused = [line for line in lines if line["event"] == "refused"]
    throttled = [line for line in lines if line["event"] == "refusals throttled"]
    assert len(refused) == 30
    assert refused[0]["address"] == FLOODER
    assert refused[0]["reason"] == "unknown API key"
    assert len(throttled) == 1, "one line per throttled address and window, not one per request"
    assert throttled[0]["address"] == FLOODER


async def test_a_flood_from_many_addresses_meets_the_global_ceiling(
    clean_ledger: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines

    monkeypatch.setenv("REFUSAL_LIMIT_GLOBAL", "50/minute")
    get_settings.cache_clear()
    try:
        app = create_app()
        codes = []
        for n in range(80):
            async with client_from(app, f"192.0.2.{n}") as client:
                answer = await client.get(
                    "/api/v1/tasks", headers={"authorization": f"Bearer {unknown_key()}"}
                )
                codes.append(answer.status_code)
    finally:
        await dispose_async_engines()
        monkeypatch.undo()
        get_settings.cache_clear()
    assert codes.count(401) == 50
    assert codes[50:] == [429] * 30
