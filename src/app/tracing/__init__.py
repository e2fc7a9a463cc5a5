"""Traces: OpenTelemetry spans from the HTTP request to what a task does, when asked for.

Tracing is on in a process when OTEL_EXPORTER_OTLP_ENDPOINT is set (docs/tracing.md). Off, every
function here checks one flag and returns: nothing imports OpenTelemetry's SDK or exporter, no
span is made, and jobs are stored without a trace context. On, `start` installs a tracer
provider exporting over OTLP/HTTP, and a job keeps the context of the span that made it in the
ledger (`jobs.trace_context`): its runs, on whichever worker, are that span's children.

The OpenTelemetry API is imported only where a function runs with tracing on; what needs the
SDK lives in `_export`, imported by `start` alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from app.settings import get_settings

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

SERVICE_API = "conveyor-api"
SERVICE_RELAY = "conveyor-relay"
SERVICE_WORKER = "conveyor-worker"
# The instrumentation scope of Conveyor's own spans.
SCOPE = "conveyor"

_on: bool | None = None
_tracer: Any = None  # Conveyor's tracer, from the global provider (a test may put its own)
_NOTHING: AbstractContextManager[None] = nullcontext()


def enabled() -> bool:
    """Whether this process traces: OTEL_EXPORTER_OTLP_ENDPOINT (or its traces URL) is set."""
    global _on
    if _on is None:
        settings = get_settings()
        _on = bool(settings.otel_exporter_otlp_endpoint or settings.otel_exporter_otlp_traces_endpoint)
    return _on


def start(service: str) -> None:
    """Export this process's spans as `service`; nothing when tracing is off. Once per process."""
    if enabled():
        from app.tracing import _export

        _export.install(service)


def current_context() -> str | None:
    """What a new job stores: the current span's W3C traceparent, and after a newline its
    tracestate if it has one; None when tracing is off or no span is current."""
    if not enabled():
        return None
    from opentelemetry import trace

    return _encode(trace.get_current_span())


# Requests that are not traced: probes and scrapes, each a trace of its own every few seconds.
UNTRACED_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})


def untraced_request(scope: Mapping[str, Any]) -> bool:
    """For FastAPI's telemetry: whether a request is left out of the traces."""
    return scope.get("path") in UNTRACED_PATHS


def enqueuing(task: str | None, count: int = 1) -> AbstractContextManager[Any]:
    """The span around making jobs of `task` (None: of several tasks); the jobs made inside it
    continue it."""
    if not enabled():
        return _NOTHING
    attributes: dict[str, Any] = {} if task is None else {"conveyor.task": task}
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    return _span("enqueue" if task is None else f"enqueue {task}", "PRODUCER", attributes)


class Published(Protocol):
    """What the relay's publish span needs of a job (app.ledger.jobs.Publishable)."""

    @property
    def id(self) -> UUID: ...
    @property
    def task(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def trace_context(self) -> str | None: ...


def publishing(jobs: Sequence[Published]) -> AbstractContextManager[Any]:
    """The relay's publish of a batch, as a span in each job's trace (a child of the span that
    made it; jobs made without one get none), from the take to the broker's confirm."""
    if not enabled():
        return _NOTHING
    return _publishing([job for job in jobs if job.trace_context], len(jobs))


def sending_mail(server: str, port: int, recipients: int) -> AbstractContextManager[Any]:
    """The span around an SMTP send: where to and to how many, never what."""
    if not enabled():
        return _NOTHING
    attributes = {"server.address": server, "server.port": port, "conveyor.smtp.recipients": recipients}
    return _span("smtp send", "CLIENT", attributes)


def tick_context(schedule: str, tick: datetime) -> str | None:
    """A schedule's tick starts a trace of its own: a root span, ended at once, whose context
    the tick's job stores. None when tracing is off."""
    if not enabled():
        return None
    from opentelemetry.context import Context

    tracer = tracer_of_conveyor()
    attributes = {"conveyor.schedule": schedule, "conveyor.scheduled_for": tick.isoformat()}
    span = tracer.start_span(f"tick {schedule}", context=Context(), attributes=attributes)
    span.end()
    return _encode(span)


def start_run(stored: str | None, name: str, attributes: dict[str, Any]) -> tuple[Span, object]:
    """Start a job's run span as a child of the context its job stored (a root without one) and
    make it current; `end_run` ends it. Only called with tracing on."""
    from opentelemetry import context, trace

    parent = decode(stored)
    span = tracer_of_conveyor().start_span(
        name, context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
    )
    token = context.attach(trace.set_span_in_context(span, parent))
    return span, token


def end_run(span: Span, token: object, error: BaseException | None) -> None:
    from opentelemetry import context

    if error is not None:
        _failed(span, error)
    span.end()
    context.detach(token)  # type: ignore[arg-type]


def _failed(span: Span, error: BaseException) -> None:
    """An error's type, not its message: a message may hold an address or a payload's value."""
    from opentelemetry.trace import StatusCode

    span.set_attribute("error.type", type(error).__qualname__)
    span.set_status(StatusCode.ERROR, type(error).__qualname__)


def tracer_of_conveyor() -> Any:
    global _tracer
    if _tracer is None:
        from opentelemetry import trace

        _tracer = trace.get_tracer(SCOPE)
    return _tracer


def decode(stored: str | None) -> Context:
    """The context a stored trace context stands for (an empty one for None or a bad value)."""
    from opentelemetry.context import Context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not stored:
        return Context()
    traceparent, _, tracestate = stored.partition("\n")
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return TraceContextTextMapPropagator().extract(carrier, context=Context())


def _encode(span: Span) -> str | None:
    from opentelemetry.trace import set_span_in_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(span))
    traceparent = carrier.get("traceparent")
    if traceparent is None:
        return None
    tracestate = carrier.get("tracestate")
    return f"{traceparent}\n{tracestate}" if tracestate else traceparent


@contextmanager
def _span(name: str, kind: str, attributes: dict[str, Any]) -> Iterator[Span]:
    from opentelemetry import trace

    tracer = tracer_of_conveyor()
    with tracer.start_as_current_span(
        name,
        kind=trace.SpanKind[kind],
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as error:
            _failed(span, error)
            raise


@contextmanager
def _publishing(jobs: Sequence[Published], count: int) -> Iterator[None]:
    from opentelemetry import trace

    tracer = tracer_of_conveyor()
    spans = [
        tracer.start_span(
            f"publish {job.task}",
            context=decode(job.trace_context),
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "conveyor.job.id": str(job.id),
                "messaging.destination.name": job.queue,
                "messaging.batch.message_count": count,
            },
        )
        for job in jobs
    ]
    try:
        yield
    except BaseException as error:
        for span in spans:
            _failed(span, error)
        raise
    finally:
        for span in spans:
            span.end()
