"""Who is looking at the dashboard: a signed-in key with `read` to look, `operate` to act.

Pages without a valid session redirect to /dashboard/login (htmx fragments get a 401 that
tells htmx to go there). Every action checks `operate` on the server, whatever the page
showed; the same-origin check and the SameSite=Strict cookie keep other sites out.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from app.access import sessions
from app.access.keys import Client, Scope
from app.api.auth import identify, limiter, verifier
from app.api.deps import reading
from app.errors import SignInRequired, Unauthenticated

LOGIN = "/dashboard/login"


async def viewer(request: Request) -> Client:
    """A dependency: the signed-in client (or a script's Bearer key), which may look (`read`)."""
    if "authorization" in request.headers:
        client = await identify(request)
    else:
        value = request.cookies.get(sessions.COOKIE)
        key_id = sessions.key_id_of(value) if value else None
        if key_id is None:
            raise SignInRequired("sign in with an API key")
        try:
            client = await verifier(request).client_by_id(key_id, reading)
        except Unauthenticated:
            raise SignInRequired("the key of this session is no longer valid") from None
    await limiter(request).hit(client.key_id)
    request.state.client = client
    return client.require(Scope.READ)


async def operator(request: Request) -> Client:
    """A dependency: the signed-in client, which may act (`operate`)."""
    return (await viewer(request)).require(Scope.OPERATE)


def set_session(response: Response, request: Request, client: Client) -> None:
    value, lasts = sessions.issue(client.key_id)
    response.set_cookie(
        sessions.COOKIE,
        value,
        max_age=lasts,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https",
    )


def clear_session(response: Response) -> None:
    response.delete_cookie(sessions.COOKIE, path="/")


async def _sign_in_first(request: Request, exc: Exception) -> Response:
    if request.headers.get("hx-request") == "true":
        return JSONResponse({"detail": str(exc)}, status_code=401, headers={"HX-Redirect": LOGIN})
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{LOGIN}?next={quote(target, safe='')}", status_code=303)


def install(app: FastAPI) -> None:
    app.add_exception_handler(SignInRequired, _sign_in_first)
