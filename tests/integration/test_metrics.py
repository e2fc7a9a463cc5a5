"""The API's /metrics: request counts by route template, and ledger and broker gauges read at scrape time."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import generate_latest

from app import transport
from app.operate import health
from app.operate.gauges import StateCollector
from app.settings import Settings, get_settings
from tests.support.exposition import UUID_PATTERN, Samples, parse, value
from tests.support.infra import Infra, free_port
from tests.support.seed import declare_queues, insert_job, insert_worker, publish_dead_copy

pytestmark = pytest.mark.anyio

ECHO = "app.tasks.example.echo"


@pytest.fixture(autouse=True)
def fresh_probes(clean_ledger: Infra) -> Iterator[None]:
    """Queues declared as a worker declares them, and no gauge kept from an earlier scrape."""
    declare_queues()
    health.forget_probes()
    yield
    health.forget_probes()


async def scrape(api: httpx.AsyncClient) -> Samples:
    response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def test_requests_are_counted_by_route_template_and_status_never_by_the_path_sent(
    api: httpx.AsyncClient,
) -> None:
    before = await scrape(api)
    missing = "/api/v1/jobs/00000000-0000-4000-8000-000000000000"
    assert (await api.get(missing)).status_code == 404
    assert (await api.get("/no/such/page")).status_code == 404
    too_big = b'{"task": "' + b"x" * 1_100_000 + b'"}'
    refused = await api.post("/api/v1/jobs", content=too_big, headers={"content-type": "application/json"})
    assert refused.status_code == 413
    response = await api.get("/metrics")
    after = parse(response.text)

    def moved(**labels: str) -> float:
        return value(after, "conveyor_http_requests_total", **labels) - value(
            before, "conveyor_http_requests_total", **labels
        )

    assert moved(method="GET", route="/api/v1/jobs/{job_id}", status="404") == 1
    assert moved(method="GET", route="<unmatched>", status="404") == 1
    assert moved(method="POST", route="/api/v1/jobs", status="413") == 1  # refused before routing
    assert moved(method="GET", route="/metrics", status="200") == 1
    assert value(
        after, "conveyor_http_request_duration_seconds_count", method="GET", route="/api/v1/jobs/{job_id}"
    )
    assert not UUID_PATTERN.search(response.text)


async def test_an_accepted_job_moves_the_accepted_counter_and_shows_in_the_ledger_gauges(
    api: httpx.AsyncClient,
) -> None:
    before = await scrape(api)
    posted = await api.post("/api/v1/jobs", json={"task": ECHO, "payload": {"message": "hi"}})
    assert posted.status_code == 202
    health.forget_probes()
    after = await scrape(api)
    accepted = value(after, "conveyor_jobs_accepted_total", task=ECHO)
    assert accepted - value(before, "conveyor_jobs_accepted_total", task=ECHO) == 1
    assert value(after, "conveyor_jobs", state="queued") == 1
    assert value(after, "conveyor_outbox_backlog") == 1  # no relay runs in this test


async def test_the_ledger_gauges_count_states_backlog_live_workers_and_the_oldest_due_job(
    clean_ledger: Infra, api: httpx.AsyncClient
) -> None:
    insert_job(clean_ledger, state="queued", published=False, available_seconds_ago=120)
    insert_job(clean_ledger, state="queued", published=False, available_seconds_ago=-600)  # delayed
    insert_job(clean_ledger, state="retrying", published=False, available_seconds_ago=5)
    insert_job(clean_ledger, state="running")
    for _ in range(3):
        insert_job(clean_ledger, state="succeeded")
    dead = insert_job(clean_ledger, state="dead")
    publish_dead_copy(clean_ledger, dead)
    insert_worker(clean_ledger, host="a")
    insert_worker(clean_ledger, host="b", seconds_ago=600)

    samples = await scrape(api)
    by_state = {state: value(samples, "conveyor_jobs", state=state) for state in ("queued", "retrying")}
    assert by_state == {"queued": 2, "retrying": 1}
    assert value(samples, "conveyor_jobs", state="running") == 1
    assert value(samples, "conveyor_jobs", state="succeeded") == 3
    assert value(samples, "conveyor_jobs", state="dead") == 1
    assert value(samples, "conveyor_jobs", state="cancelled") == 0
    assert value(samples, "conveyor_outbox_backlog") == 2  # due and unpublished; the delayed one is not due
    assert 120 <= value(samples, "conveyor_oldest_queued_job_age_seconds") < 180
    assert value(samples, "conveyor_workers_live") == 1
    assert value(samples, "conveyor_dead_letter_depth", queue="default") == 1
    assert value(samples, "conveyor_queue_depth", queue="email") == 0
    assert value(samples, "conveyor_metrics_source_up", source="ledger") == 1
    assert value(samples, "conveyor_metrics_source_up", source="broker") == 1


def test_an_unreachable_broker_drops_its_gauges_and_says_so_while_the_ledger_still_reports(
    clean_ledger: Infra,
) -> None:
    settings = Settings(broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    samples = parse(generate_latest(StateCollector(lambda: ["default"], settings)).decode())
    assert value(samples, "conveyor_metrics_source_up", source="broker") == 0
    assert value(samples, "conveyor_metrics_source_up", source="ledger") == 1
    assert not [name for name, _ in samples if name.startswith("conveyor_queue_depth")]
    assert ("conveyor_jobs", frozenset({("state", "queued")})) in samples


def test_a_hung_broker_holds_a_scrape_no_longer_than_the_probe_timeout(
    clean_ledger: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "PROBE_TIMEOUT_SECONDS", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        settings = Settings(broker_url=f"amqp://guest:guest@127.0.0.1:{silent.getsockname()[1]}/")
        started = time.monotonic()
        samples = parse(generate_latest(StateCollector(lambda: ["default"], settings)).decode())
        assert time.monotonic() - started < 1.5
    assert value(samples, "conveyor_metrics_source_up", source="broker") == 0
    assert value(samples, "conveyor_metrics_source_up", source="ledger") == 1


def test_state_counts_are_exact_up_to_the_cap_and_estimated_above_it(clean_ledger: Infra) -> None:
    from app.operate.stats import counts_by_state_sync

    for _ in range(5):
        insert_job(clean_ledger, state="succeeded")
    insert_job(clean_ledger, state="dead")
    with health.probe_engine(get_settings().database_url).connect() as conn:
        exact = {state: count.count for state, count in counts_by_state_sync(conn).items()}
        capped = {state: count.count for state, count in counts_by_state_sync(conn, exact_up_to=2).items()}
    assert exact == {
        "queued": 0,
        "running": 0,
        "retrying": 0,
        "succeeded": 5,
        "dead": 1,
        "cancelled": 0,
        "waiting": 0,
    }
    assert capped["dead"] == 1
    assert capped["succeeded"] > 2  # the planner's estimate, never below what was counted
