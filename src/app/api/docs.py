"""The interactive API docs (`/docs`): Swagger UI served from this host, under a strict policy.

Swagger UI's files come from an installed package (fastapi-offline, pinned in pyproject.toml),
never from a CDN: a page that holds a key in its "Authorize" box runs no script another host
could change. Its initializer is a static file of ours, because the page's
Content-Security-Policy runs no inline script. The page and the document need `read` (a
Bearer key, or the dashboard's sign-in); the assets are public code and need none.
"""

from __future__ import annotations

import html
from importlib.resources import files
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.responses import FileResponse, HTMLResponse

from app.access.keys import Scope
from app.api.auth import require

ASSETS_PATH = "/docs/assets"
_SWAGGER = Path(str(files("fastapi_offline").joinpath("static")))
_OURS = Path(__file__).parent / "static"
ASSETS: dict[str, Path] = {
    "swagger-ui-bundle.js": _SWAGGER / "swagger-ui-bundle.js",
    "swagger-ui.css": _SWAGGER / "swagger-ui.css",
    "favicon.png": _SWAGGER / "favicon.png",
    "swagger-init.js": _OURS / "swagger-init.js",
}
# Scripts, styles, images and requests only from this origin; Swagger UI draws its icons as
# data: images. No framing (the "Authorize" box holds a key), no forms elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'"
)
PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  <link rel="icon" type="image/png" href="{assets}/favicon.png?v={version}">
  <link rel="stylesheet" href="{assets}/swagger-ui.css?v={version}">
  <script src="{assets}/swagger-ui-bundle.js?v={version}" defer></script>
  <script src="{assets}/swagger-init.js?v={version}" defer></script>
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
</body>
</html>
"""


def assets_version() -> str:
    """Changes whenever an asset does (a new package version), so a long cache is never stale."""
    return str(int(max(path.stat().st_mtime for path in ASSETS.values())))


def install(application: FastAPI, title: str, openapi_url: str) -> None:
    """`/docs` (needs `read`) and its assets (public)."""
    page = PAGE.format(
        title=html.escape(title), assets=ASSETS_PATH, version=assets_version(), openapi_url=openapi_url
    )
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }

    @application.get("/docs", include_in_schema=False, dependencies=[Depends(require(Scope.READ))])
    async def swagger_page() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    @application.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        path = ASSETS.get(name)
        if path is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no docs asset {name!r}")
        return FileResponse(
            path, headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
        )
