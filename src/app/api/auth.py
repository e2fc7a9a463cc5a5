"""Who is asking: the API key of a request (a Bearer header, or the dashboard's session for safe
requests from its pages), its rate, and its scopes; 401, 429 and 403 otherwise.

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
from app.api.deps import reading
from app.errors import Unauthenticated
from app.settings import get_settings

SAFE_METHODS = frozenset({"GET", "HEAD"})
NEEDS_A_KEY = "this route needs an API key: send Authorization: Bearer <key>"


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


async def identify(request: Request) -> Client:
    """The client of a request; raises Unauthenticated."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("send the key as: Authorization: Bearer <key>")
        return await verifier(request).verify(token.strip(), reading)
    # A signed-in dashboard user may read (the API docs, the JSON the pages link to); anything
    # that changes something needs the header, which no other site can make a browser send.
    session = request.cookies.get(sessions.COOKIE)
    if session and request.method in SAFE_METHODS:
        key_id = sessions.key_id_of(session)
        if key_id is not None:
            return await verifier(request).client_by_id(key_id, reading)
    raise Unauthenticated(NEEDS_A_KEY)


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
