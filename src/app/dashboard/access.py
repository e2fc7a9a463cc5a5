"""Who is looking at the dashboard: a signed-in key with `read` to look, `operate` to act.

A sign-in is a server-side session (`access.sessions`). Pages without a live session redirect
to /dashboard/login (htmx fragments get a 401 that tells htmx to go there). Every action
checks `operate` on the server, whatever the page showed; the same-origin check and the
SameSite=Strict cookie keep other sites out.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from app.access import sessions
from app.access.keys import Client, Scope
from app.api.auth import address_of, identify, limiter, session_cookie, signed_in
from app.api.deps import transaction
from app.errors import SignInRequired, Unauthenticated

LOGIN = "/dashboard/login"


async def viewer(request: Request) -> Client:
    """A dependency: the signed-in client (or a script's Bearer key), which may look (`read`)."""
    if "authorization" in request.headers:
        client = await identify(request)
    else:
        value = request.cookies.get(session_cookie(request))
        if not value:
            raise SignInRequired("sign in with an API key")
        try:
            client = await signed_in(request, value)
        except Unauthenticated:
            raise SignInRequired("your session has ended: sign in again") from None
    await limiter(request).hit(client.key_id)
    request.state.client = client
    return client.require(Scope.READ)


async def operator(request: Request) -> Client:
    """A dependency: the signed-in client, which may act (`operate`)."""
    return (await viewer(request)).require(Scope.OPERATE)


async def open_session(request: Request, response: Response, client: Client) -> bool:
    """Sign `client` in: a session row, and its cookie on `response`. False when the key was
    revoked meanwhile (it was verified from the process's memory)."""
    opened = await sessions.open_session(client, address_of(request), transaction)
    if opened is None:
        return False
    value, lasts = opened
    secure = request.url.scheme == "https"
    response.set_cookie(
        sessions.cookie_name(secure),
        value,
        max_age=lasts,
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    return True


async def end_session(request: Request, response: Response) -> tuple[str, str] | None:
    """Sign out: the session's row goes (everywhere, at once) and the browser drops its cookie.
    The id and name of the key it was opened with, or None when there was no live session."""
    name = session_cookie(request)
    value = request.cookies.get(name)
    ended = await sessions.end_session(value, transaction) if value else None
    response.delete_cookie(
        name, path="/", httponly=True, samesite="strict", secure=name == sessions.SECURE_COOKIE
    )
    return ended


async def _sign_in_first(request: Request, exc: Exception) -> Response:
    if request.headers.get("hx-request") == "true":
        return JSONResponse({"detail": str(exc)}, status_code=401, headers={"HX-Redirect": LOGIN})
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{LOGIN}?next={quote(target, safe='')}", status_code=303)


def install(app: FastAPI) -> None:
    app.add_exception_handler(SignInRequired, _sign_in_first)
