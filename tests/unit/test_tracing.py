"""Tracing off costs nothing: the processes import none of OpenTelemetry's SDK or exporter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


def imported(endpoint: str | None) -> dict[str, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["BROKER_URL"] = "stub://"
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


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
