"""Both metrics endpoints, scraped from outside while real processes run a known set of jobs."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.operate.gauges import LEDGER_CACHE_SECONDS
from app.operate.health import BROKER_CACHE_SECONDS
from tests.support.exposition import UUID_PATTERN, Samples, parse, value
from tests.support.infra import Infra, free_port
from tests.support.keys import auth
from tests.support.stack import Stack

ECHO = "app.tasks.example.echo"
KEPT_SECONDS = max(LEDGER_CACHE_SECONDS, BROKER_CACHE_SECONDS)
FLAKY = "app.tasks.example.flaky"


@pytest.fixture(params=[2, 1], ids=["two-processes", "one-process"])
def metered_stack(
    clean_ledger: Infra, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Stack, str, int]]:
    """api + relay + a worker whose exporter listens on a free port: of two processes (under
    Dramatiq's main process, the exporter forked beside them), or of one (the exporter on a
    thread of the process running the jobs)."""
    port = free_port()
    env = {**os.environ, "WORKER_METRICS_PORT": str(port), "WORKER_METRICS_HOST": "127.0.0.1"}
    stack = Stack(workdir=tmp_path, env=env)
    try:
        stack.start_api()
        stack.start_relay()
        stack.start_worker(processes=request.param, threads=2)
        stack.wait_ready()
        url = f"http://127.0.0.1:{port}/metrics"
        # Dramatiq forks the exporter once every worker process has booted; one process starts
        # its exporter thread once its worker has.
        try:
            scrape(url, timeout=60.0)
        except httpx.HTTPError as error:
            raise AssertionError(f"worker exporter not up: {error!r}\n{stack.logs()}") from None
        yield stack, url, request.param
    finally:
        stack.stop()


def scrape(url: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            # The API's /metrics needs a key with the metrics scope; the worker's exporter is
            # reached only on its own network (compose exposes it, never publishes it).
            response = httpx.get(url, timeout=5.0, headers=auth())
            response.raise_for_status()
            return response.text
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_api_and_worker_counters_move_by_exactly_the_jobs_that_ran(
    metered_stack: tuple[Stack, str, int],
) -> None:
    stack, worker_url, processes = metered_stack
    api_before = parse(scrape(f"{stack.base_url}/metrics"))
    worker_before = parse(scrape(worker_url))

    ids = [stack.post_job(ECHO, {"message": f"m{i}"}) for i in range(3)]
    ids.append(stack.post_job(FLAKY, {"fail_times": 1}))
    ids.append(stack.post_job(FLAKY, {"fail_times": 1, "permanent": True}))
    finished = stack.wait_for(ids)
    assert [finished[i]["state"] for i in ids] == ["succeeded"] * 4 + ["dead"]

    expected = {
        ("conveyor_worker_jobs_started_total", ECHO): 3,
        ("conveyor_worker_jobs_succeeded_total", ECHO): 3,
        ("conveyor_worker_jobs_started_total", FLAKY): 3,
        ("conveyor_worker_jobs_retried_total", FLAKY): 1,
        ("conveyor_worker_jobs_succeeded_total", FLAKY): 1,
        ("conveyor_worker_jobs_dead_total", FLAKY): 1,
        ("conveyor_worker_job_duration_seconds_count", ECHO): 3,
        ("conveyor_worker_job_duration_seconds_count", FLAKY): 3,
        ("conveyor_worker_jobs_retried_total", ECHO): 0,
        ("conveyor_worker_jobs_dead_total", ECHO): 0,
    }

    def worker_moves(samples: Samples) -> dict[tuple[str, str], float]:
        return {
            (name, task): value(samples, name, task=task, queue="default")
            - value(worker_before, name, task=task, queue="default")
            for name, task in expected
        }

    # A worker counts an outcome just after it writes it to the ledger: allow it a moment.
    deadline = time.monotonic() + 10
    while (moved := worker_moves(worker_after := parse(scrape(worker_url)))) != expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert moved == expected
    for task in (ECHO, FLAKY):
        in_progress = value(worker_after, "conveyor_worker_jobs_in_progress", task=task, queue="default")
        assert in_progress == 0

    time.sleep(KEPT_SECONDS)  # past the time the first scrape's gauges are kept
    api_text = scrape(f"{stack.base_url}/metrics")
    api_after = parse(api_text)

    def api_moved(name: str, **labels: str) -> float:
        return value(api_after, name, **labels) - value(api_before, name, **labels)

    assert api_moved("conveyor_jobs_accepted_total", task=ECHO) == 3
    assert api_moved("conveyor_jobs_accepted_total", task=FLAKY) == 2
    posts = {"method": "POST", "route": "/api/v1/jobs", "status": "202"}
    assert api_moved("conveyor_http_requests_total", **posts) == 5
    assert api_moved("conveyor_http_request_duration_seconds_count", method="POST", route="/api/v1/jobs") == 5
    polled = {"method": "GET", "route": "/api/v1/jobs/{job_id}", "status": "200"}
    assert api_moved("conveyor_http_requests_total", **polled) >= 5

    for source in ("ledger", "broker"):
        up = value(api_after, "conveyor_metrics_source_up", source=source)
        assert up == 1, f"{source} unreadable at scrape time\n{stack.logs()}"
    assert value(api_after, "conveyor_jobs", state="succeeded") == 4
    assert value(api_after, "conveyor_jobs", state="dead") == 1
    assert value(api_after, "conveyor_jobs", state="queued") == 0
    assert value(api_after, "conveyor_outbox_backlog") == 0
    assert value(api_after, "conveyor_oldest_queued_job_age_seconds") == 0
    assert value(api_after, "conveyor_workers_live") == processes  # one heartbeat per worker process
    assert value(api_after, "conveyor_queue_depth", queue="default") == 0
    assert value(api_after, "conveyor_dead_letter_depth", queue="default") == 1

    worker_text = scrape(worker_url)
    for exposition in (api_text, worker_text):
        assert not UUID_PATTERN.search(exposition), "a job id leaked into a label"
