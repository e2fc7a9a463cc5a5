"""A dashboard session is a server-side record: no secret forges one, and signing out, revoking
its key or its expiry ends it everywhere at once. Its cookie is `__Host-` and Secure over https,
https as a trusted proxy says it, never as anyone else does."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from app.cli.commands import cli
from app.settings import get_settings
from tests.support.infra import Infra
from tests.support.keys import make_key

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
BASE = "http://conveyor.test"
SAME_ORIGIN = {"origin": BASE}
PROXY = "127.0.0.1"  # FORWARDED_ALLOW_IPS's default: a proxy on the same machine
STRANGER = "203.0.113.9"


@pytest.fixture
async def browser(clean_ledger: Infra) -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps cookies, as a browser does, and follows no redirect by itself."""
    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client
    await dispose_async_engines()


async def sign_in(
    client: httpx.AsyncClient, key: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    response = await client.post(
        "/dashboard/login",
        data={"key": key, "next": "/dashboard"},
        headers={**SAME_ORIGIN, **(headers or {})},
    )
    assert response.status_code == 303, response.text
    return response


def sessions_of(infra: Infra, key_id: str) -> int:
    with psycopg.connect(infra.libpq_url) as conn:
        row = conn.execute("SELECT count(*) FROM dashboard_sessions WHERE key_id = %s", (key_id,)).fetchone()
    assert row is not None
    return int(row[0])


def repository_secrets() -> set[str]:
    """Every value the repository has given KEYS_SECRET: the old development default, and any
    default in the compose file, the settings or the tests."""
    from app.access.keys import LEGACY_DEVELOPMENT_PEPPER

    found = {LEGACY_DEVELOPMENT_PEPPER.decode(), ""}
    for path in (REPO / "docker-compose.yml", REPO / "src/app/settings.py", *REPO.glob("tests/**/*.py")):
        text = path.read_text(encoding="utf-8")
        found.update(re.findall(r"KEYS_SECRET:-([^}]*)\}", text))
        found.update(re.findall(r"KEYS_SECRET\"?,\s*\"([^\"]+)\"", text))
    return found


def old_format_cookie(secret: str, key_id: str) -> str:
    """A session cookie as the releases before server-side sessions signed it."""
    expires = int(time.time()) + 3600
    mac = hmac.new(secret.encode(), f"session|{key_id}|{expires}".encode(), hashlib.sha256).digest()
    return f"{key_id}.{expires}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


async def test_a_cookie_in_the_old_format_signed_with_any_secret_of_the_repository_opens_nothing(
    browser: httpx.AsyncClient,
) -> None:
    key_id = make_key(["read", "operate"]).split("_")[1]
    secrets_found = repository_secrets()
    assert "conveyor-development-keys-secret-change-me" in secrets_found
    for secret in secrets_found:
        forged = old_format_cookie(secret, key_id)
        for name in ("conveyor_session", "__Host-conveyor_session"):
            browser.cookies.clear()
            browser.cookies.set(name, forged)
            assert (await browser.get("/dashboard")).status_code == 303, (secret, name)
            api = await browser.get("/api/v1/jobs")
            assert api.status_code == 401, (secret, name, api.text)


async def test_a_signed_out_cookie_opens_nothing(browser: httpx.AsyncClient, clean_ledger: Infra) -> None:
    key = make_key(["read"])
    value = (await sign_in(browser, key)).cookies["conveyor_session"]
    assert (await browser.get("/dashboard")).status_code == 200
    assert (await browser.get("/api/v1/jobs")).status_code == 200, "the pages' JSON links open too"
    assert sessions_of(clean_ledger, key.split("_")[1]) == 1
    out = await browser.post("/dashboard/logout", headers=SAME_ORIGIN)
    assert out.status_code == 303
    assert 'conveyor_session=""' in out.headers["set-cookie"], "the browser is told to drop it"
    assert sessions_of(clean_ledger, key.split("_")[1]) == 0
    browser.cookies.set("conveyor_session", value)  # kept by hand, or copied before signing out
    assert (await browser.get("/dashboard")).status_code == 303
    assert (await browser.get("/api/v1/jobs")).status_code == 401


async def test_a_cookie_opens_nothing_once_keys_revoke_ran(
    browser: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    name = f"revoked-{uuid.uuid4().hex[:6]}"
    key = make_key(["read"], name=name)
    await sign_in(browser, key)
    await sign_in(browser, key)  # a second sign-in, another browser: both end
    assert sessions_of(clean_ledger, key.split("_")[1]) == 2
    assert (await browser.get("/dashboard")).status_code == 200
    revoked = CliRunner().invoke(cli, ["keys", "revoke", name])
    assert revoked.exit_code == 0, revoked.output
    assert sessions_of(clean_ledger, key.split("_")[1]) == 0, "its sessions went with it"
    assert (await browser.get("/dashboard")).status_code == 303, "at once, not after a cache period"


async def test_a_session_whose_key_was_revoked_opens_nothing_even_if_its_row_survived(
    browser: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    """The lookup checks the key itself: a sign-in racing the revocation leaves a row behind."""
    key = make_key(["read"])
    await sign_in(browser, key)
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key.split("_")[1],))
    assert sessions_of(clean_ledger, key.split("_")[1]) == 1
    assert (await browser.get("/dashboard")).status_code == 303


async def test_an_expired_session_opens_nothing_and_is_pruned(
    browser: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    from app.relay.pruning import prune

    expired, live = make_key(["read"]), make_key(["read"])
    await sign_in(browser, live)
    browser.cookies.clear()
    await sign_in(browser, expired)
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE dashboard_sessions SET expires_at = now() - interval '1 second' WHERE key_id = %s",
            (expired.split("_")[1],),
        )
    assert (await browser.get("/dashboard")).status_code == 303
    done = prune()
    assert done.sessions == 1
    assert sessions_of(clean_ledger, expired.split("_")[1]) == 0
    assert sessions_of(clean_ledger, live.split("_")[1]) == 1, "a live session is not pruned"


async def test_a_session_lasts_session_seconds(browser: httpx.AsyncClient, clean_ledger: Infra) -> None:
    key = make_key(["read"])
    cookie = (await sign_in(browser, key)).headers["set-cookie"]
    assert f"Max-Age={get_settings().session_seconds}" in cookie
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM expires_at - created_at), client_address, id_hash"
            " FROM dashboard_sessions WHERE key_id = %s",
            (key.split("_")[1],),
        ).fetchone()
    assert row is not None
    assert abs(float(row[0]) - get_settings().session_seconds) < 5
    assert row[1] == "127.0.0.1"
    value = browser.cookies["conveyor_session"]
    assert row[2] == hashlib.sha256(value.encode()).hexdigest(), "only a hash of the cookie is stored"


# --- the cookie's name and Secure flag, as `conveyor api` serves it behind a proxy ---------------


@pytest.fixture
def served(clean_ledger: Infra) -> object:
    """The app as `conveyor api` hands it to uvicorn: uvicorn's own proxy-headers wrapping,
    with the options `conveyor api` passes."""
    import uvicorn

    from app.asgi import create_app
    from app.cli.serve import server_options

    config = uvicorn.Config(create_app(), **server_options())
    config.load()
    return config.loaded_app


async def sign_in_from(app: object, address: str, headers: dict[str, str]) -> httpx.Response:
    from app.ledger.engines import dispose_async_engines

    transport = httpx.ASGITransport(app=app, client=(address, 40000))  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            return await sign_in(client, make_key(["read"]), headers)
    finally:
        await dispose_async_engines()


async def test_behind_a_trusted_proxy_saying_https_the_cookie_is_host_prefixed_and_secure(
    served: object,
) -> None:
    signed_in = await sign_in_from(served, PROXY, {"x-forwarded-proto": "https"})
    cookie = signed_in.headers["set-cookie"]
    assert cookie.startswith("__Host-conveyor_session=")
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert {"secure", "httponly", "path=/", "samesite=strict"} <= set(attributes)
    assert not any(part.startswith("domain") for part in attributes), "__Host- cookies name no domain"
    from app.ledger.engines import dispose_async_engines

    value = signed_in.cookies["__Host-conveyor_session"]
    transport = httpx.ASGITransport(app=served, client=(PROXY, 40001))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        headers = {"x-forwarded-proto": "https", "cookie": f"__Host-conveyor_session={value}"}
        assert (await client.get("/dashboard", headers=headers)).status_code == 200, "it is read back"
    await dispose_async_engines()


async def test_x_forwarded_proto_from_an_untrusted_address_leaves_the_cookie_plain(served: object) -> None:
    cookie = (await sign_in_from(served, STRANGER, {"x-forwarded-proto": "https"})).headers["set-cookie"]
    assert cookie.startswith("conveyor_session=")
    assert "secure" not in [part.strip().lower() for part in cookie.split(";")]


async def test_forwarded_allow_ips_names_the_trusted_proxies(
    clean_ledger: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from app.asgi import create_app
    from app.cli.serve import server_options

    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8")
    get_settings.cache_clear()
    try:
        config = uvicorn.Config(create_app(), **server_options())
        config.load()
        https = {"x-forwarded-proto": "https"}
        trusted = (await sign_in_from(config.loaded_app, "10.1.2.3", https)).headers["set-cookie"]
        untrusted = (await sign_in_from(config.loaded_app, PROXY, https)).headers["set-cookie"]
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert trusted.startswith("__Host-conveyor_session=")
    assert untrusted.startswith("conveyor_session=")
