"""The trace context a job keeps in the ledger, from each door a job comes through.

In this process with an SDK tracer provider of the test's own (in memory), as a process with
OTEL_EXPORTER_OTLP_ENDPOINT set would have; tests/e2e/test_traces.py exports over OTLP for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast
from uuid import UUID

import httpx
import psycopg
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from app import tracing
from app.execution.tracing import RunSpans
from app.jobs.context import JobContext, set_current
from app.ledger import flow
from app.ledger import jobs as ledger
from app.ledger.jobs import Doorbell
from app.relay.schedules import Ticker
from app.settings import get_settings
from app.tasks.example import echo, send_email, tenant_report
from tests.support.infra import Infra

ECHO = "app.tasks.example.echo"
EMAIL = {"to": "ada@example.com", "subject": "Hi", "body": "Hello"}


class Traced:
    """What the test's tracer provider finished, and a tracer for the caller's own spans."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.app_tracer: Tracer = self.provider.get_tracer("the caller's app")

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[Traced]:
    spans = Traced()
    monkeypatch.setattr(tracing, "_on", True)
    monkeypatch.setattr(tracing, "_tracer", spans.provider.get_tracer(tracing.SCOPE))
    yield spans
    spans.provider.shutdown()


@pytest.fixture
def untraced(monkeypatch: pytest.MonkeyPatch) -> Traced:
    monkeypatch.setattr(tracing, "_on", False)
    return Traced()


def trace_context(infra: Infra, job_id: UUID | str) -> str | None:
    with psycopg.connect(infra.libpq_url) as conn:
        row = conn.execute("SELECT trace_context FROM jobs WHERE id = %s", (str(job_id),)).fetchone()
    assert row is not None
    return cast(str | None, row[0])


def traceparent(span: Any) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def test_a_job_enqueued_in_the_callers_transaction_under_its_span_continues_that_span(
    clean_ledger: Infra, traced: Traced
) -> None:
    engine = create_engine(clean_ledger.database_url)
    try:
        with traced.app_tracer.start_as_current_span("sign up") as outer, Session(engine) as session:
            one = send_email.enqueue_sync(EMAIL, session=session)
            many = echo.enqueue_many_sync([{"message": "a"}, {"message": "b"}], session=session)
            session.commit()
    finally:
        engine.dispose()
    [enqueue_one] = traced.named("enqueue app.tasks.example.send_email")
    [enqueue_many] = traced.named(f"enqueue {ECHO}")
    for span in (enqueue_one, enqueue_many):
        assert span.parent is not None
        assert span.parent.span_id == outer.get_span_context().span_id
        assert span.context.trace_id == outer.get_span_context().trace_id
    assert trace_context(clean_ledger, one.id) == traceparent(enqueue_one)
    assert {trace_context(clean_ledger, job.id) for job in many} == {traceparent(enqueue_many)}


def test_with_tracing_off_no_job_keeps_a_trace_context_and_no_span_is_made(
    clean_ledger: Infra, untraced: Traced
) -> None:
    with untraced.app_tracer.start_as_current_span("sign up"):
        accepted = send_email.enqueue_sync(EMAIL)
    assert trace_context(clean_ledger, accepted.id) is None
    assert [s.name for s in untraced.exporter.get_finished_spans()] == ["sign up"]


@pytest.mark.anyio
async def test_with_tracing_off_a_job_posted_over_http_keeps_no_trace_context(
    api: httpx.AsyncClient, clean_ledger: Infra, untraced: Traced
) -> None:
    response = await api.post("/api/v1/jobs", json={"task": ECHO, "payload": {"message": "m"}})
    assert response.status_code == 202, response.text
    assert trace_context(clean_ledger, response.json()["id"]) is None


def test_a_schedule_ticks_job_starts_a_trace_of_its_own(clean_ledger: Infra, traced: Traced) -> None:
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO schedules (name, task, queue, payload, max_attempts, every_seconds, next_run_at)
            VALUES ('nightly', %s, 'default', '{"message": "tick"}', 5, 60,
                    to_timestamp(floor(extract(epoch FROM now()) / 60) * 60))
            """,
            (ECHO,),
        )
    with traced.app_tracer.start_as_current_span("whatever ran before") as outer:
        assert Ticker(get_settings()).fire_due() == 1
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        [(job_id,)] = conn.execute("SELECT id FROM jobs WHERE schedule = 'nightly'").fetchall()
    [tick] = traced.named("tick nightly")
    assert tick.parent is None, "a tick is the root of its trace"
    assert tick.context.trace_id != outer.get_span_context().trace_id
    assert tick.attributes is not None
    assert tick.attributes["conveyor.schedule"] == "nightly"
    assert trace_context(clean_ledger, job_id) == traceparent(tick)


def test_a_run_is_a_child_of_its_jobs_context_and_a_child_job_of_the_run(
    clean_ledger: Infra, traced: Traced
) -> None:
    with traced.app_tracer.start_as_current_span("sign up"):
        parent = send_email.enqueue_sync(EMAIL)
    [enqueue] = traced.named("enqueue app.tasks.example.send_email")
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        [claim] = ledger.claim(conn, "test-worker", 30.0, [Doorbell(parent.id, send_email.name)])
    assert claim is not None
    assert claim.trace_context == traceparent(enqueue), "the claim hands the worker the stored context"

    ctx = JobContext(
        claim.token, claim.task, claim.max_attempts, "test-worker", trace_context=claim.trace_context
    )
    message = cast(Any, SimpleNamespace(queue_name="email"))
    spans = RunSpans()
    set_current(ctx)
    try:
        spans.before_process_message(cast(Any, None), message)
        child = echo.enqueue_sync({"message": "child"})
        spans.after_process_message(cast(Any, None), message, exception=RuntimeError("to a@b.example"))
    finally:
        set_current(None)

    [run] = traced.named("run app.tasks.example.send_email")
    assert run.parent is not None
    assert run.parent.span_id == enqueue.context.span_id
    assert run.context.trace_id == enqueue.context.trace_id
    assert run.attributes is not None
    assert run.attributes["conveyor.job.id"] == str(parent.id)
    assert run.attributes["error.type"] == "RuntimeError"
    assert not run.events, "an error's message (an address, a payload's value) is not exported"
    [child_enqueue] = traced.named(f"enqueue {ECHO}")
    assert child_enqueue.parent is not None
    assert child_enqueue.parent.span_id == run.context.span_id
    assert trace_context(clean_ledger, child.id) == traceparent(child_enqueue)


def test_a_claim_within_limits_hands_the_worker_the_stored_context_too(
    clean_ledger: Infra, traced: Traced
) -> None:
    accepted = tenant_report.enqueue_sync({"tenant": "acme", "seconds": 0})
    stored = trace_context(clean_ledger, accepted.id)
    assert stored is not None, "with no span current, the enqueue's own span is the context"
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        [claim], held = flow.claim_limited(
            conn, "test-worker", 30.0, [Doorbell(accepted.id, tenant_report.name)]
        )
    assert held == set()
    assert claim is not None
    assert claim.trace_context == stored
