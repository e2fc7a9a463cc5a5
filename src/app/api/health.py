"""Liveness, readiness and the metrics endpoint.

Readiness answers anyone, since orchestrators probe it without a key, but only `ok` per check:
the reasons name the migration, queues, their depths, how many workers run and what a driver
said, which is for a key's holder (any scope) to read.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.access import sessions
from app.access.keys import Scope
from app.api.auth import authenticate
from app.api.errors import UNAVAILABLE
from app.api.metrics import render_metrics
from app.api.responses import AUTH
from app.api.schemas import Liveness, Readiness
from app.errors import ConveyorError
from app.jobs.registry import all_tasks
from app.operate import health

router = APIRouter(tags=["health"])
# What stops a key from being verified: a refusal (unknown, revoked, throttled) or the ledger away.
KEY_NOT_VERIFIED: tuple[type[Exception], ...] = (ConveyorError, *UNAVAILABLE)


@router.get("/health/live", response_model=Liveness, operation_id="get_liveness")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/health/ready",
    responses={
        200: {"model": Readiness, "description": "Every check passed; with a key, each check's details too"},
        503: {
            "model": Readiness,
            "description": "A check failed; the body names which (and why, with a key)",
        },
    },
    operation_id="get_readiness",
)
async def ready(request: Request) -> JSONResponse:
    detailed = await _holds_a_key(request)
    queues = sorted({spec.queue for spec in all_tasks()})
    database, broker, worker, relay = await asyncio.gather(
        asyncio.to_thread(health.check_database),
        asyncio.to_thread(health.check_broker, None, queues),
        asyncio.to_thread(health.check_workers),
        asyncio.to_thread(health.check_relays),
    )
    checks = {"database": database, "broker": broker, "worker": worker, "relay": relay}
    ok = all(check.ok for check in checks.values())
    body: dict[str, Any] = {
        "status": "ok" if ok else "fail",
        "checks": {name: check.as_json() if detailed else {"ok": check.ok} for name, check in checks.items()},
    }
    return JSONResponse(body, status_code=200 if ok else 503)


async def _holds_a_key(request: Request) -> bool:
    """Whether the request shows a valid key (any scope) or a signed-in session.

    No key asks nothing of the key store, so probes never count as refusals; a bad, throttled
    or unverifiable key goes the way every route's does and then counts as none: readiness
    answers about its dependencies, never 401 or 429 about the key.
    """
    if "authorization" not in request.headers and sessions.COOKIE not in request.cookies:
        return False
    try:
        await authenticate(request, *Scope)
    except KEY_NOT_VERIFIED:
        return False
    return True


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}, **AUTH},
    operation_id="get_metrics",
)
async def metrics(request: Request) -> Response:
    await authenticate(request, Scope.METRICS)
    # The ledger and broker gauges query at scrape time, with timeouts: off the event loop.
    return Response(await asyncio.to_thread(render_metrics), media_type=CONTENT_TYPE_LATEST)
