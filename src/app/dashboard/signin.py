"""Signing in to the dashboard with an API key (a form field named `key`), and out again.

The form is guarded like a request with a bad key: an address past its refusal budget gets a
429 page before its key is looked at, and each failed sign-in counts against the budget.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import FileResponse, RedirectResponse

from app.access.keys import Client, Scope
from app.api.auth import address_of, refusals, verifier
from app.api.deps import reading
from app.dashboard.access import LOGIN, end_session, open_session
from app.dashboard.actions import form_fields
from app.dashboard.audit import record_sign_in, record_sign_out
from app.dashboard.rendering import render, safe_next
from app.dashboard.security import require_same_origin
from app.dashboard.views import HERE
from app.errors import Forbidden, RateLimited, Unauthenticated

router = APIRouter(prefix="/dashboard", include_in_schema=False)
HOME = "/dashboard"
# The sign-in page needs its stylesheet and scripts before anyone has signed in.
STATIC = {path.name: path for path in (HERE / "static").iterdir() if path.is_file()}


@router.get("/login")
async def login_page(request: Request, next: str = "") -> Response:
    return render(request, "login.html", {"nav": "", "next": safe_next(next, HOME), "refused": ""})


@router.post("/login", dependencies=[Depends(require_same_origin)])
async def login(request: Request) -> Response:
    fields = await form_fields(request)
    target = safe_next(fields.get("next"), HOME)
    response = RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)
    try:
        client = await _signing_in(request, fields.get("key", ""), response)
    except RateLimited as limited:
        return _refused_page(request, target, limited)
    except (Unauthenticated, Forbidden) as error:
        try:
            await refusals(request).refuse(address_of(request), f"sign-in: {error}")
        except RateLimited as limited:
            return _refused_page(request, target, limited)
        return _refused_page(request, target, error)
    await record_sign_in(request, client)
    return response


async def _signing_in(request: Request, key: str, response: Response) -> Client:
    """The client of a key that may look, signed in on `response`; raises Unauthenticated,
    Forbidden, or RateLimited when the address has used up its refusals."""
    gate, address = refusals(request), address_of(request)
    await gate.admit(address)  # even a key this process remembers is not tried while throttled
    client = (await verifier(request).verify(key.strip(), reading, lambda: gate.lookup(address))).require(
        Scope.READ
    )
    if not await open_session(request, response, client):
        raise Unauthenticated("this API key was revoked")
    return client


def _refused_page(request: Request, target: str, error: Exception) -> Response:
    context = {"nav": "", "next": target, "refused": str(error)}
    if not isinstance(error, RateLimited):
        return render(request, "login.html", context, status_code=status.HTTP_401_UNAUTHORIZED)
    page = render(request, "login.html", context, status_code=status.HTTP_429_TOO_MANY_REQUESTS)
    page.headers["Retry-After"] = str(error.retry_after)
    return page


@router.post("/logout", dependencies=[Depends(require_same_origin)])
async def logout(request: Request) -> Response:
    response = RedirectResponse(LOGIN, status_code=status.HTTP_303_SEE_OTHER)
    await record_sign_out(request)  # first: it names the key whose session this is
    await end_session(request, response)
    return response


@router.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    path = STATIC.get(name)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no static file {name!r}")
    # Pages link assets with ?v=<mtime>, so a long cache never serves a stale file.
    return FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})
