"""The ASGI application: the HTTP API and the dashboard on one FastAPI app (`conveyor api` serves it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import app.tasks  # noqa: F401  (registers the public tasks the API accepts)
from app import tracing
from app.api import (
    accept,
    audit,
    batch,
    emails,
    errors,
    events,
    health,
    jobs,
    openapi,
    queues,
    schedules,
    webhooks,
    workflows,
)
from app.api.failures import LastResort
from app.api.guard import BodyGuard
from app.api.metrics import HttpMetrics
from app.dashboard import access as dashboard_access
from app.dashboard import router as dashboard_router
from app.ledger.engines import dispose_async_engines
from app.logs import configure_logging
from app.settings import get_settings


@asynccontextmanager
async def lifespan(application: FastAPI) -> AsyncIterator[None]:
    yield
    await events.close_event_pump(application)
    intake = getattr(application.state, "intake", None)
    if intake is not None:
        await intake.close()
    await dispose_async_engines()


def create_app() -> FastAPI:
    configure_logging()
    settings = get_settings()
    tracing.start(tracing.SERVICE_API)
    application = FastAPI(
        title="Conveyor",
        version="1.0.0",
        summary="Background jobs you can trust: a ledger, an outbox, retries and dead letters.",
        lifespan=lifespan,
        # FastAPI's built-in telemetry looks up OpenTelemetry providers on every request, so
        # it stays off unless tracing is on: then it makes each request's span (the enqueue's
        # parent), and Conveyor's metrics stay Prometheus's.
        telemetry={
            "tracing": tracing.enabled(),
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            # Conveyor installs the exporter (app.tracing); FastAPI's own, which
            # FASTAPI_OTEL_AUTO_CONFIGURE=true would add to it, would send every span twice.
            "auto_configure": False,
            "exclude": tracing.untraced_request,
        },
        # Served by `openapi.install`, behind a key (and off in production unless API_DOCS).
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    errors.install(application)
    dashboard_access.install(application)
    openapi.install(application, serve_docs=settings.docs_enabled)
    application.include_router(accept.router)
    application.include_router(batch.router)
    application.include_router(emails.router)
    application.include_router(jobs.router)
    application.include_router(events.router)
    application.include_router(schedules.router)
    application.include_router(workflows.router)
    application.include_router(queues.router)
    application.include_router(webhooks.router)
    application.include_router(audit.router)
    application.include_router(health.router)
    application.include_router(dashboard_router)
    application.add_middleware(BodyGuard, max_body_bytes=settings.max_body_bytes)
    application.add_middleware(LastResort)  # a request id on every answer; JSON for the unforeseen
    application.add_middleware(HttpMetrics)  # outermost: counts what the guard refuses too
    return application
