"""Who is asking: the API key of a request (a Bearer header, or the dashboard's session for safe
requests from its pages), its rate, and its scopes; 401, 429 and 403 otherwise.

Requests without a valid key are refused cheaply: a key that is not remembered is looked up
only within its address's refusal budget (`access.refusals`), and each refusal counts against
it. A key the process remembers as valid pays for none of that.

`authenticate` is called directly by the hot path (`POST /api/v1/jobs` skips FastAPI's
dependency solving); `require` makes the same check a route dependency.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request

from app.access import sessions
from app.access.keys import Client, Scope, Verifier
from app.access.ratelimit import RateLimiter
from app.access.refusals import Refusals
from app.api.deps import reading
from app.errors import Unauthenticated
from app.settings import get_settings

SAFE_METHODS = frozenset({"GET", "HEAD"})
NEEDS_A_KEY = "this route needs an API key: send Authorization: Bearer <key>"
SESSION_ENDED = "this dashboard session has ended or never existed: sign in again"


def verifier(request: Request) -> Verifier:
    found: Verifier | None = getattr(request.app.state, "verifier", None)
    if found is None:
        found = request.app.state.verifier = Verifier()
    return found


def limiter(request: Request) -> RateLimiter:
    found: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if found is None:
        found = request.app.state.rate_limiter = RateLimiter(get_settings().rate_limit)
    return found


def refusals(request: Request) -> Refusals:
    found: Refusals | None = getattr(request.app.state, "refusals", None)
    if found is None:
        settings = get_settings()
        found = Refusals(settings.refusal_limit_per_address, settings.refusal_limit_global)
        request.app.state.refusals = found
    return found


def address_of(request: Request) -> str:
    """The client's address (a trusted proxy's X-Forwarded-For, see FORWARDED_ALLOW_IPS)."""
    return request.client.host if request.client is not None else "unknown"


def session_cookie(request: Request) -> str:
    """The name of the dashboard's session cookie for this request's scheme."""
    return sessions.cookie_name(request.url.scheme == "https")


async def identify(request: Request) -> Client:
    """The client of a request; raises Unauthenticated (or RateLimited past the refusal budget)."""
    header = request.headers.get("authorization")
    if header is not None:
        return await _bearer(request, header)
    # A signed-in dashboard user may read (the API docs, the JSON the pages link to); anything
    # that changes something needs the header, which no other site can make a browser send.
    session = request.cookies.get(session_cookie(request))
    if session and request.method in SAFE_METHODS:
        return await signed_in(request, session)
    raise Unauthenticated(NEEDS_A_KEY)


async def _bearer(request: Request, header: str) -> Client:
    scheme, _, token = header.partition(" ")
    try:
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("send the key as: Authorization: Bearer <key>")
        return await verifier(request).verify(
            token.strip(), reading, lambda: refusals(request).lookup(address_of(request))
        )
    except Unauthenticated as refused:
        await refusals(request).refuse(address_of(request), str(refused))
        raise


async def signed_in(request: Request, value: str) -> Client:
    """The client of a dashboard session cookie's value; raises Unauthenticated, counted as a
    refusal, when it names no live session (or RateLimited past the refusal budget)."""
    address = address_of(request)
    try:
        if sessions.well_formed(value):
            async with refusals(request).lookup(address):
                client = await sessions.client_of_session(value, reading)
            if client is not None:
                return client
        raise Unauthenticated(SESSION_ENDED)
    except Unauthenticated as refused:
        await refusals(request).refuse(address, str(refused))
        raise


async def authenticate(request: Request, *scopes: Scope) -> Client:
    """The client, counted against its rate, holding one of `scopes`; raises 401/429/403 errors."""
    client = await identify(request)
    await limiter(request).hit(client.key_id)
    return client.require(*scopes)


def require(*scopes: Scope) -> Callable[[Request], Coroutine[Any, Any, Client]]:
    """A route dependency: the request's client, holding one of `scopes`."""

    async def dependency(request: Request) -> Client:
        return await authenticate(request, *scopes)

    return dependency
