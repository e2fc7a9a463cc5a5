"""The last resort: a request id on every answer, and a JSON 500 for what nothing else caught.

Every request gets an id (the client's `X-Request-ID` when it is a plain token, else a new
one), bound to every log line of the request and sent back in `X-Request-ID`. An exception
that no handler turned into an answer is logged once, with its traceback and that id, and
answered `500 {"detail": ..., "request_id": ...}` as JSON: never Starlette's plain-text
page, and never a second traceback from the server.
"""

from __future__ import annotations

import re
import secrets

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logs import get_logger

log = get_logger("conveyor.api")

REQUEST_ID_HEADER = b"x-request-id"
# A client's own id is kept when it is a plain token; anything else is replaced.
CLIENT_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")


class LastResort:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request failed", method=scope.get("method"), path=scope.get("path"))
            if not started:
                await _internal_error(send, request_id)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER and CLIENT_REQUEST_ID.match(value):
            return str(value.decode())
    return secrets.token_hex(8)


async def _internal_error(send: Send, request_id: str) -> None:
    body = orjson.dumps(
        {"detail": "internal error: the request failed unexpectedly; it was logged", "request_id": request_id}
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (REQUEST_ID_HEADER, request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})
