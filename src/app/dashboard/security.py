"""What keeps another site from steering the dashboard: a same-origin check on every action.

A signed-in operator's browser carries a session cookie, so the threat is cross-site request
forgery: a page elsewhere posting a form to "replay all" through that browser. Browsers mark
every such POST: `Origin` names the page that sent it, and `Sec-Fetch-Site` says whether it
came from the same origin. An action is refused unless the origin (or, from an old browser,
the referrer) is this host.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import HTTPException, Request, Response, status

SAFE_FETCH_SITES = frozenset({"same-origin", "none"})

# Scripts and styles only from this origin (htmx is vendored), no framing (clickjacking),
# forms post only here.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def require_same_origin(request: Request) -> None:
    """A FastAPI dependency: 403 unless the request comes from a page of this host."""
    host = request.headers.get("host", "").lower()
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in SAFE_FETCH_SITES:
        raise _forbidden(f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        raise _forbidden("request refused: no Origin or Referer header names this dashboard")
    if not host or urlsplit(source).netloc.lower() != host:
        raise _forbidden(f"cross-origin request refused: {source} is not {host or 'this host'}")


def _forbidden(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, reason)


def harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Keep Referer on same-origin requests: it is the fallback of the origin check.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response
