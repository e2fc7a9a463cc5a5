"""Tracing off costs nothing: the processes import none of OpenTelemetry's SDK or exporter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from app import tracing

# Imports the API's app and the worker's broker module as their processes do, and names the
# OpenTelemetry modules each brought in.
PROBE = """
import json, sys
import app.worker
worker = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
from app.asgi import create_app
create_app()
api = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
print(json.dumps({"worker": worker, "api": api}))
"""
HEAVY = ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.instrumentation")

# Builds the worker's broker and the API's app as their processes do, sends the app one request,
# and names what each installed: the broker's middleware, the app's ASGI layers, whether
# psycopg's connects are wrapped (what the psycopg instrumentation does), the global tracer
# provider, and what the request saw (FastAPI's per-request telemetry state, a current span).
HOOKS = """
import asyncio, json
import httpx, psycopg
from starlette.requests import Request
from opentelemetry import trace

def name(thing):
    kind = thing if isinstance(thing, type) else type(thing)
    return kind.__module__ + "." + kind.__qualname__

def patched():
    targets = {"psycopg.connect": psycopg.connect, "Connection.connect": psycopg.Connection.connect,
               "AsyncConnection.connect": psycopg.AsyncConnection.connect}
    return sorted(k for k, target in targets.items() if hasattr(target, "__wrapped__"))

import app.worker
worker = {"middleware": [name(m) for m in app.worker.broker.middleware], "patched": patched()}
from app.asgi import create_app
api = create_app()

async def probe(request: Request):
    return {"telemetry": "fastapi.telemetry" in request.scope,
            "span": trace.get_current_span().get_span_context().is_valid}

api.add_api_route("/probe", probe)
layers, layer = [], api.build_middleware_stack()
while layer is not None:
    layers.append(name(layer))
    layer = getattr(layer, "app", None)
async def ask():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as http:
        return (await http.get("/probe")).json()

seen = asyncio.run(ask())
print(json.dumps({
    "worker": worker,
    "api": {"layers": layers, "patched": patched(), "request": seen},
    "provider": name(trace.get_tracer_provider()),
}))
"""


# Starts and stops the API's app (its lifespan, where FastAPI may add exporters of its own) and
# names the span processors of the global tracer provider.
PROCESSORS = """
import json
from fastapi.testclient import TestClient
from opentelemetry import trace
from app.asgi import create_app
with TestClient(create_app()):
    pass
processors = trace.get_tracer_provider()._active_span_processor._span_processors
print(json.dumps([type(p).__name__ for p in processors]))
"""


def run(probe: str, endpoint: str | None, **extra: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FASTAPI_OTEL_"))}
    env["BROKER_URL"] = "stub://"
    env.update(extra)
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        env["OTEL_BSP_SCHEDULE_DELAY"] = "60000"  # the probe's span waits for the exit's flush
        env["OTEL_EXPORTER_OTLP_TIMEOUT"] = "1"  # which finds nothing listening: give up soon
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def imported(endpoint: str | None) -> dict[str, list[str]]:
    return dict(run(PROBE, endpoint))


def test_with_tracing_off_the_worker_imports_no_opentelemetry_and_the_api_only_fastapis_api() -> None:
    modules = imported(None)
    assert modules["worker"] == []
    # FastAPI itself imports the OpenTelemetry API (its own telemetry, left off); nothing more.
    assert not [m for m in modules["api"] if m.startswith(HEAVY)]


def test_with_tracing_on_the_sdk_and_exporter_are_loaded() -> None:
    modules = imported("http://127.0.0.1:9")
    for process in ("worker", "api"):
        assert "opentelemetry.sdk.trace" in modules[process]
        assert "opentelemetry.exporter.otlp.proto.http.trace_exporter" in modules[process]


def test_with_tracing_off_nothing_is_installed_on_the_request_or_run_path() -> None:
    hooks = dict(run(HOOKS, None))
    assert hooks["provider"] == "opentelemetry.trace.ProxyTracerProvider", "no SDK provider set"
    assert hooks["worker"]["middleware"] == [
        "dramatiq.middleware.time_limit.TimeLimit",
        "dramatiq.middleware.shutdown.ShutdownNotifications",
        "app.execution.middleware.LedgerMiddleware",
        "app.execution.exporter.WorkerExporter",
    ]
    assert hooks["worker"]["patched"] == hooks["api"]["patched"] == [], "psycopg is not instrumented"
    layers = hooks["api"]["layers"]
    assert not [layer for layer in layers if layer.startswith("opentelemetry")]
    # FastAPI always puts its exception observer in the stack (a bare try/except that records
    # only for a request its telemetry took): that one, and no other telemetry layer.
    telemetry = [layer for layer in layers if layer.startswith("fastapi.telemetry")]
    assert telemetry == ["fastapi.telemetry._asgi.ExceptionTelemetryMiddleware"]
    # FastAPI's request telemetry stays out of the request: no telemetry state, no span.
    assert hooks["api"]["request"] == {"telemetry": False, "span": False}


def test_with_tracing_on_the_same_probe_sees_the_hooks() -> None:
    hooks = dict(run(HOOKS, "http://127.0.0.1:9"))
    assert hooks["provider"] == "opentelemetry.sdk.trace.TracerProvider"
    assert hooks["worker"]["middleware"][-1] == "app.execution.tracing.RunSpans"
    assert hooks["worker"]["patched"] == ["AsyncConnection.connect", "Connection.connect", "psycopg.connect"]
    assert hooks["api"]["request"] == {"telemetry": True, "span": True}


def test_fastapis_own_exporter_stays_out_even_when_its_environment_asks_for_it() -> None:
    # FastAPI's FASTAPI_OTEL_AUTO_CONFIGURE=true adds an OTLP exporter to the provider at
    # startup: beside Conveyor's, every span would be sent twice.
    assert run(PROCESSORS, "http://127.0.0.1:9", FASTAPI_OTEL_AUTO_CONFIGURE="true") == ["BatchSpanProcessor"]


def test_off_every_helper_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    monkeypatch.setattr(tracing, "_on", False)
    assert tracing.current_context() is None
    assert tracing.tick_context("nightly", datetime.now(UTC)) is None
    with tracing.enqueuing("app.tasks.example.echo") as span, tracing.sending_mail("h", 25, 1) as mail:
        assert span is None
        assert mail is None


def test_a_stored_context_reads_back_with_its_tracestate() -> None:
    from opentelemetry import trace

    stored = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\nvendor=opaque"
    span_context = trace.get_current_span(tracing.decode(stored)).get_span_context()
    assert span_context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert span_context.span_id == 0xB7AD6B7169203331
    assert span_context.trace_state.get("vendor") == "opaque"
    assert not trace.get_current_span(tracing.decode("not a traceparent")).get_span_context().is_valid
    assert not trace.get_current_span(tracing.decode(None)).get_span_context().is_valid
