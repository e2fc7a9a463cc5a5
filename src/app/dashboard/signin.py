"""Signing in to the dashboard with an API key (a form field named `key`), and out again."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import FileResponse, RedirectResponse

from app.access.keys import Scope
from app.api.auth import verifier
from app.api.deps import reading
from app.dashboard.access import LOGIN, clear_session, set_session
from app.dashboard.actions import form_fields
from app.dashboard.audit import record_sign_in, record_sign_out
from app.dashboard.rendering import render, safe_next
from app.dashboard.security import require_same_origin
from app.dashboard.views import HERE
from app.errors import Forbidden, Unauthenticated

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
    try:
        client = await verifier(request).verify(fields.get("key", "").strip(), reading)
        client.require(Scope.READ)
    except (Unauthenticated, Forbidden) as error:
        context = {"nav": "", "next": target, "refused": str(error)}
        return render(request, "login.html", context, status_code=status.HTTP_401_UNAUTHORIZED)
    await record_sign_in(request, client)
    response = RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)
    set_session(response, request, client)
    return response


@router.post("/logout", dependencies=[Depends(require_same_origin)])
async def logout(request: Request) -> Response:
    await record_sign_out(request)
    response = RedirectResponse(LOGIN, status_code=status.HTTP_303_SEE_OTHER)
    clear_session(response)
    return response


@router.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    path = STATIC.get(name)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no static file {name!r}")
    # Pages link assets with ?v=<mtime>, so a long cache never serves a stale file.
    return FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})
