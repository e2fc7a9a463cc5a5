"""An ASGI guard in front of the app: oversized bodies get 413, non-JSON API bodies 415.

It reads at most MAX_BODY_BYTES (+1) of a body, chunked or not, and stops there: a
rejected body never grows the process's memory.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _error(send, 400, "Content-Length is not a number")
                return
            if int(declared) > self.max_body_bytes:
                await _too_large(send, self.max_body_bytes)
                return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await _too_large(send, self.max_body_bytes)
                return
        if body and scope["path"].startswith("/api/") and not _is_json(headers):
            await _error(send, 415, "request body must be JSON (Content-Type: application/json)")
            return
        await self.app(scope, _replay(bytes(body), receive), send)


def _is_json(headers: dict[bytes, bytes]) -> bool:
    media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _too_large(send: Send, limit: int) -> None:
    await _error(send, 413, f"request body larger than {limit} bytes", close=True)


async def _error(send: Send, status: int, detail: str, *, close: bool = False) -> None:
    payload = orjson.dumps({"detail": detail})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
