"""The body guard: 413 for oversized bodies (declared or chunked), 415 for non-JSON API bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.api.guard import BodyGuard

LIMIT = 1024


async def echo_length(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


def client() -> httpx.AsyncClient:
    app = Starlette(
        routes=[
            Route("/api/v1/x", echo_length, methods=["POST"]),
            Route("/dashboard/x", echo_length, methods=["POST"]),
        ]
    )
    guarded = BodyGuard(app, max_body_bytes=LIMIT)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://test")


async def chunks(total: int, size: int = 256) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece


@pytest.mark.anyio
async def test_a_body_within_the_limit_reaches_the_app_whole() -> None:
    async with client() as c:
        response = await c.post(
            "/api/v1/x", content=b"{" + b" " * 1000 + b"}", headers={"content-type": "application/json"}
        )
    assert response.status_code == 200
    assert response.json() == {"received": 1002}


@pytest.mark.anyio
async def test_a_declared_oversized_body_gets_413_without_being_read() -> None:
    async with client() as c:
        response = await c.post(
            "/api/v1/x", content=b"x" * (LIMIT + 1), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert "larger than 1024 bytes" in response.json()["detail"]


@pytest.mark.anyio
async def test_a_chunked_oversized_body_gets_413_too() -> None:
    async with client() as c:
        response = await c.post(
            "/api/v1/x", content=chunks(LIMIT * 4), headers={"content-type": "application/json"}
        )
    assert "content-length" not in response.request.headers
    assert response.status_code == 413


@pytest.mark.anyio
async def test_a_non_json_api_body_gets_415() -> None:
    async with client() as c:
        response = await c.post("/api/v1/x", content=b"to=a", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert "JSON" in response.json()["detail"]


@pytest.mark.anyio
async def test_json_with_a_charset_or_a_json_suffix_is_json() -> None:
    async with client() as c:
        for media in ("application/json; charset=utf-8", "application/merge-patch+json"):
            response = await c.post("/api/v1/x", content=b"{}", headers={"content-type": media})
            assert response.status_code == 200, media


@pytest.mark.anyio
async def test_form_posts_outside_the_api_are_not_refused() -> None:
    async with client() as c:
        response = await c.post("/dashboard/x", data={"a": "b"})
    assert response.status_code == 200


@pytest.mark.anyio
async def test_a_content_length_that_is_not_a_number_gets_400() -> None:
    async with client() as c:
        response = await c.post(
            "/api/v1/x", content=b"{}", headers={"content-type": "application/json", "content-length": "abc"}
        )
    assert response.status_code == 400
