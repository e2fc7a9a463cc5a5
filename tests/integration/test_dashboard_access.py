"""The dashboard's sign-in: a key with `read` looks, `operate` acts, and the server checks both."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest

from app.settings import get_settings
from tests.support.infra import Infra
from tests.support.keys import make_key, revoke_key
from tests.support.seed import insert_job, job_row

pytestmark = pytest.mark.anyio

BASE = "http://conveyor.test"
SAME_ORIGIN = {"origin": BASE}


@pytest.fixture
async def browser(clean_ledger: Infra) -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps cookies, as a browser does, and follows no redirect by itself."""
    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client
    await dispose_async_engines()


async def sign_in(client: httpx.AsyncClient, key: str, next_page: str = "/dashboard") -> httpx.Response:
    return await client.post("/dashboard/login", data={"key": key, "next": next_page}, headers=SAME_ORIGIN)


async def test_a_visitor_without_a_session_is_sent_to_the_sign_in_page(browser: httpx.AsyncClient) -> None:
    for path in ("/dashboard", "/dashboard/jobs?state=dead", "/dashboard/dead"):
        response = await browser.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/dashboard/login?next=")
    page = await browser.get("/dashboard/login")
    assert page.status_code == 200
    assert 'name="key"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    fragment = await browser.get("/dashboard/fragments/overview", headers={"hx-request": "true"})
    assert fragment.status_code == 401
    assert fragment.headers["hx-redirect"] == "/dashboard/login"


async def test_a_wrong_key_stays_on_the_sign_in_page(browser: httpx.AsyncClient) -> None:
    for key in ("cvk_0123456789ab_" + "y" * 43, "nonsense", make_key(["enqueue"])):
        response = await sign_in(browser, key)
        assert response.status_code == 401, key
        assert 'name="key"' in response.text
        assert "conveyor_session" not in response.headers.get("set-cookie", "")
    assert (await browser.get("/dashboard")).status_code == 303


async def test_a_read_key_sees_a_dead_job_but_its_forged_replay_is_refused(
    browser: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    dead = insert_job(clean_ledger, state="dead", errors=["boom"])
    signed_in = await sign_in(browser, make_key(["read"]), next_page=f"/dashboard/jobs/{dead}")
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == f"/dashboard/jobs/{dead}"
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
    assert f"Max-Age={get_settings().session_seconds}" in cookie
    page = await browser.get(f"/dashboard/jobs/{dead}")
    assert page.status_code == 200
    assert "boom" in page.text
    assert f'action="/dashboard/jobs/{dead}/replay"' not in page.text, "no button it could not use"
    forged = await browser.post(
        f"/dashboard/jobs/{dead}/replay", data={"next": "/dashboard"}, headers=SAME_ORIGIN
    )
    assert forged.status_code == 403
    assert job_row(clean_ledger, dead) == {"state": "dead", "run": 1, "attempts": 1}


async def test_an_operate_key_replays_a_dead_job_from_its_page(
    browser: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    dead = insert_job(clean_ledger, state="dead", errors=["boom"])
    assert (await sign_in(browser, make_key(["read", "operate"]))).status_code == 303
    page = await browser.get(f"/dashboard/jobs/{dead}")
    assert f'action="/dashboard/jobs/{dead}/replay"' in page.text
    replayed = await browser.post(
        f"/dashboard/jobs/{dead}/replay", data={"next": "/dashboard"}, headers=SAME_ORIGIN
    )
    assert replayed.status_code == 303
    assert job_row(clean_ledger, dead) == {"state": "queued", "run": 2, "attempts": 0}


async def test_an_action_from_another_site_is_refused_even_when_signed_in(
    browser: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    dead = insert_job(clean_ledger, state="dead")
    await sign_in(browser, make_key(["read", "operate"]))
    response = await browser.post(
        f"/dashboard/jobs/{dead}/replay", data={}, headers={"origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert job_row(clean_ledger, dead)["state"] == "dead"  # type: ignore[index]


async def test_signing_out_ends_the_session(browser: httpx.AsyncClient) -> None:
    await sign_in(browser, make_key(["read"]))
    assert (await browser.get("/dashboard")).status_code == 200
    out = await browser.post("/dashboard/logout", headers=SAME_ORIGIN)
    assert out.status_code == 303
    assert out.headers["location"] == "/dashboard/login"
    assert (await browser.get("/dashboard")).status_code == 303


async def test_revoking_a_key_ends_its_dashboard_sessions_at_once(browser: httpx.AsyncClient) -> None:
    name = f"dashboard-{uuid.uuid4().hex[:6]}"
    await sign_in(browser, make_key(["read"], name=name))
    assert (await browser.get("/dashboard")).status_code == 200
    revoke_key(name)
    assert (await browser.get("/dashboard")).status_code == 303


async def test_a_tampered_session_is_no_session(browser: httpx.AsyncClient) -> None:
    signed_in = await sign_in(browser, make_key(["read"]))
    value = signed_in.cookies["conveyor_session"]
    browser.cookies.clear()
    flipped = ("A" if value[0] != "A" else "B") + value[1:]
    for forged in (flipped, value[:-1], value + "A", secrets.token_urlsafe(32), "x.y.z", ""):
        browser.cookies.set("conveyor_session", forged)
        assert (await browser.get("/dashboard")).status_code == 303, forged
    browser.cookies.set("conveyor_session", value)
    assert (await browser.get("/dashboard")).status_code == 200, "the untampered value still opens"


async def test_a_read_key_sees_the_schedules_without_buttons_and_its_forged_pause_is_refused(
    browser: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO schedules (name, task, queue, payload, max_attempts, every_seconds, next_run_at)"
            " VALUES ('hourly', 'app.tasks.example.echo', 'default', '{\"message\": \"tick\"}', 5, 3600,"
            " now() + interval '1 hour')"
        )
        await sign_in(browser, make_key(["read"]))
        page = await browser.get("/dashboard/schedules")
        assert page.status_code == 200
        assert 'data-schedule="hourly"' in page.text
        assert "/dashboard/schedules/hourly/pause" not in page.text, "no button it could not use"
        forged = await browser.post("/dashboard/schedules/hourly/pause", data={}, headers=SAME_ORIGIN)
        assert forged.status_code == 403
        assert conn.execute("SELECT paused FROM schedules WHERE name = 'hourly'").fetchone() == (False,)
