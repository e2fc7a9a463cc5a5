"""The API's Prometheus metrics: jobs accepted, HTTP requests, and the ledger and broker gauges.

HTTP requests are labelled by route template (`/api/v1/jobs/{job_id}`), never by the path
a client sent, so the number of series stays bounded whatever the traffic.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, generate_latest
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.jobs.registry import all_tasks
from app.operate.gauges import StateCollector

JOBS_ACCEPTED = Counter("conveyor_jobs_accepted_total", "Jobs accepted (202) by task", ["task"])

HTTP_REQUESTS = Counter(
    "conveyor_http_requests_total",
    "HTTP requests answered, by method, route template and status code",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "conveyor_http_request_duration_seconds",
    "Time from request to the end of the response, by method and route template",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

STATE = StateCollector(lambda: sorted({spec.queue for spec in all_tasks()}))

# Anything else a client sends is one label value, not one per spelling.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"
MAX_ROUTER_DEPTH = 4


def render_metrics() -> bytes:
    """The exposition of this process's metrics plus the scrape-time gauges (which query)."""
    return generate_latest(REGISTRY) + generate_latest(STATE)


class HttpMetrics:
    """A pure ASGI middleware counting requests and timing them: no per-request I/O."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._counters: dict[tuple[str, str, int], Counter] = {}
        self._timers: dict[tuple[str, str], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            self._observe(scope, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
        route = route_template(scope)
        counter = self._counters.get((method, route, status))
        if counter is None:
            counter = HTTP_REQUESTS.labels(method, route, str(status))
            self._counters[(method, route, status)] = counter
        counter.inc()
        timer = self._timers.get((method, route))
        if timer is None:
            timer = self._timers[(method, route)] = HTTP_DURATION.labels(method, route)
        timer.observe(seconds)


def route_template(scope: Scope) -> str:
    """The path template of the route that served (or would have served) the request."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", UNMATCHED_ROUTE))
    # Answered before routing (e.g. 413 from the body guard): find the route it was meant for.
    return _find_route(getattr(scope.get("app"), "routes", ()), scope) or UNMATCHED_ROUTE


def _find_route(routes: Iterable[Any], scope: Scope, depth: int = 0) -> str | None:
    for candidate in routes:
        path = getattr(candidate, "path", None)
        if isinstance(path, str):
            if candidate.matches(scope)[0] is Match.FULL:
                return path
            continue
        # FastAPI keeps an included router as one entry holding the router's own routes.
        nested = getattr(candidate, "routes", None) or getattr(
            getattr(candidate, "original_router", None), "routes", None
        )
        if nested and depth < MAX_ROUTER_DEPTH:
            found = _find_route(nested, scope, depth + 1)
            if found:
                return found
    return None
