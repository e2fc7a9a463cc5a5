"""Traces across the real processes: one trace from the HTTP request to the SMTP send."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.infra import Infra
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.smtp import SmtpServer
from tests.support.stack import Stack

SEND_EMAIL = "app.tasks.example.send_email"
SERVER, PRODUCER, CONSUMER = 2, 4, 5  # OTLP's SpanKind numbers


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture
def traced_stack(clean_ledger: Infra, tmp_path: Path, receiver: OtlpReceiver) -> Iterator[Stack]:
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: the spans arrive within the test's patience
    }
    running = Stack(workdir=tmp_path, env=env)
    try:
        running.start_all()
        yield running
    finally:
        running.stop()


def one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, f"{service} {name!r}: {found}"
    return found[0]


def test_an_email_posted_over_http_is_one_trace_from_the_request_to_the_smtp_send(
    traced_stack: Stack, receiver: OtlpReceiver, smtp_server: SmtpServer, infra: Infra
) -> None:
    body = {"to": "grace@example.com", "subject": "Traced", "body": "a body no span may hold"}
    with traced_stack.client() as client:
        response = client.post("/api/v1/emails", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert traced_stack.wait_for([job_id])[job_id]["state"] == "succeeded"

    wanted = {"smtp send", "POST /api/v1/emails", f"publish {SEND_EMAIL}"}
    spans = receiver.wait_for(lambda spans: wanted <= {s.name for s in spans})
    request = one(spans, "conveyor-api", "POST /api/v1/emails")
    enqueue = one(spans, "conveyor-api", f"enqueue {SEND_EMAIL}")
    publish = one(spans, "conveyor-relay", f"publish {SEND_EMAIL}")
    run = one(spans, "conveyor-worker", f"run {SEND_EMAIL}")
    send = one(spans, "conveyor-worker", "smtp send")

    assert request.kind == SERVER
    assert request.attributes.get("http.route") == "/api/v1/emails"
    assert {request.trace_id, enqueue.trace_id, run.trace_id, send.trace_id} == {request.trace_id}
    assert enqueue.parent_id == request.span_id
    assert run.parent_id == enqueue.span_id, "the run continues the context kept in the ledger"
    assert (publish.trace_id, publish.parent_id, publish.kind) == (
        request.trace_id,
        enqueue.span_id,
        PRODUCER,
    )
    assert publish.attributes["conveyor.job.id"] == job_id
    assert publish.attributes["messaging.destination.name"] == "email"
    assert run.kind == CONSUMER
    assert send.parent_id == run.span_id
    assert run.attributes["conveyor.job.id"] == job_id
    assert run.attributes["conveyor.job.attempt"] == 1
    assert run.attributes["messaging.destination.name"] == "email"
    assert send.attributes["conveyor.smtp.recipients"] == 1
    assert send.attributes["server.port"] == smtp_server.port
    for span in (request, enqueue, publish, run, send):
        values = " ".join(str(v) for v in span.attributes.values())
        assert "a body no span may hold" not in values
        assert "grace@example.com" not in values

    with psycopg.connect(infra.libpq_url) as conn:
        [(stored,)] = conn.execute("SELECT trace_context FROM jobs WHERE id = %s", (job_id,)).fetchall()
    assert stored.startswith(f"00-{enqueue.trace_id}-{enqueue.span_id}-"), stored

    statements = [s for s in receiver.received() if s.scope.endswith("instrumentation.psycopg")]
    assert any(s.parent_id == enqueue.span_id and s.name == "WITH" for s in statements), (
        "the enqueue's INSERT is its child"
    )
    assert all(s.parent_id for s in statements), "no statement outside a request or a job is a trace"
