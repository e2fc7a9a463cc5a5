"""Liveness, readiness and the metrics endpoint."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.access.keys import Scope
from app.api.auth import authenticate
from app.api.metrics import render_metrics
from app.api.responses import AUTH
from app.jobs.registry import all_tasks
from app.operate import health

router = APIRouter(tags=["health"])


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/health/ready",
    responses={503: {"description": "A dependency failed; the body names which and why"}},
)
async def ready() -> JSONResponse:
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
        "checks": {name: check.as_json() for name, check in checks.items()},
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}, **AUTH},
)
async def metrics(request: Request) -> Response:
    await authenticate(request, Scope.METRICS)
    # The ledger and broker gauges query at scrape time, with timeouts: off the event loop.
    return Response(await asyncio.to_thread(render_metrics), media_type=CONTENT_TYPE_LATEST)
