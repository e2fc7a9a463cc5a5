"""Cookies of any shape are a 401 or a redirect to the sign-in page, never a 500: the session
cookie on the dashboard and the API, and the dashboard's notice cookie on its pages.

A browser (or anyone) sends whatever bytes it likes; the server reads a header as latin-1, so
a lone byte 0xB2 arrives as '²', which `str.isdigit()` takes and `int()` refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.infra import Infra
from tests.support.keys import make_key

pytestmark = pytest.mark.anyio

BASE = "http://conveyor.test"
SESSION_NAMES = ("conveyor_session", "__Host-conveyor_session")
NOTICE = "conveyor_notice"

# Text of every kind, raw bytes, and shapes close to what the server parses: the old signed
# format (id.expires.signature), the current one (43 URL-safe characters), notices (kind|n|state).
pieces = st.text(max_size=20) | st.sampled_from(["²", "١٢", "0", "-1", "9" * 40, "", "%", "|", "."])
values = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=80).map(lambda raw: raw.decode("latin-1")),
    st.text(max_size=40).map(quote),
    st.tuples(pieces, pieces, pieces).map(".".join),
    st.tuples(st.sampled_from(["replayed", "refused", "paused", "x"]), pieces, pieces).map(
        lambda parts: quote("|".join(parts))
    ),
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_²", min_size=43, max_size=43
    ),
)


def cookie_header(*pairs: tuple[str, str]) -> bytes:
    """A Cookie header as bytes on the wire (latin-1 where it can be, UTF-8 where it cannot)."""
    text = "; ".join(f"{name}={value}" for name, value in pairs)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="surrogateescape")


@pytest.fixture
async def fuzzed(clean_ledger: Infra) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A client of the app in this process, and a live session's cookie value."""
    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        signed_in = await client.post(
            "/dashboard/login", data={"key": make_key(["read"])}, headers={"origin": BASE}
        )
        assert signed_in.status_code == 303
        session = signed_in.cookies["conveyor_session"]
        client.cookies.clear()
        yield client, session
    await dispose_async_engines()


async def get(client: httpx.AsyncClient, path: str, cookie: bytes, **headers: Any) -> httpx.Response:
    return await client.get(path, headers={"cookie": cookie, **headers})  # type: ignore[dict-item]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(SESSION_NAMES), value=values, notice=values)
async def test_any_session_or_notice_cookie_is_a_redirect_or_a_401_never_a_500(
    fuzzed: tuple[httpx.AsyncClient, str], name: str, value: str, notice: str
) -> None:
    client, _ = fuzzed
    cookie = cookie_header((name, value), (NOTICE, notice))
    assert (await get(client, "/dashboard", cookie)).status_code == 303
    assert (await get(client, "/dashboard/jobs", cookie, **{"hx-request": "true"})).status_code == 401
    api = await get(client, "/api/v1/jobs", cookie)
    assert api.status_code == 401, api.text
    assert api.json()["detail"]
    assert (await get(client, "/dashboard/login", cookie)).status_code == 200


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(notice=values)
async def test_any_notice_cookie_on_a_signed_in_page_is_shown_or_ignored_never_a_500(
    fuzzed: tuple[httpx.AsyncClient, str], notice: str
) -> None:
    client, session = fuzzed
    page = await get(client, "/dashboard", cookie_header(("conveyor_session", session), (NOTICE, notice)))
    assert page.status_code == 200


async def test_a_unicode_digit_in_the_notice_count_is_ignored(fuzzed: tuple[httpx.AsyncClient, str]) -> None:
    client, session = fuzzed
    for notice in (quote("replayed|²|"), "replayed|\xb2|", quote("replayed|١٢|")):
        page = await get(client, "/dashboard", cookie_header(("conveyor_session", session), (NOTICE, notice)))
        assert page.status_code == 200, notice
        assert "Replayed" not in page.text
    page = await get(
        client, "/dashboard", cookie_header(("conveyor_session", session), (NOTICE, "replayed|3|"))
    )
    assert "Replayed 3 jobs" in page.text, "a well-formed notice is shown"
