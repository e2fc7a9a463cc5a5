"""The OpenTelemetry SDK for one process: a tracer provider exporting over OTLP/HTTP (protobuf).

Imported by `app.tracing.start` alone, and only with tracing on.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from app.settings import get_settings

_installed: TracerProvider | None = None


class NoLoneClientCalls(Sampler):
    """Samples every new trace except one that a client call would start on its own: the relay's
    sweeps and the workers' claims run database statements outside any request or job, each of
    which would otherwise be a trace of one span, many a second."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return ALWAYS_ON.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return "NoLoneClientCalls"


def install(service: str) -> TracerProvider:
    """Install the global tracer provider for `service` and trace psycopg's statements."""
    global _installed
    if _installed is not None:
        return _installed
    settings = get_settings()
    endpoint = (
        settings.otel_exporter_otlp_traces_endpoint
        or settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    )
    # Resource.create adds OTEL_RESOURCE_ATTRIBUTES; the service name is the process's own.
    resource = Resource.create({SERVICE_NAME: service})
    sampler = None if settings.otel_traces_sampler else ParentBased(root=NoLoneClientCalls())
    provider = TracerProvider(resource=resource, sampler=sampler)  # None: OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _instrument_psycopg(provider)
    _installed = provider
    return provider


def _instrument_psycopg(provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    PsycopgInstrumentor().instrument(tracer_provider=provider, skip_dep_check=True)
