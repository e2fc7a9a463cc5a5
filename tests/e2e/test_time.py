"""Time through the real processes: retention prunes a succeeded job within seconds and keeps a
dead and a delayed one; a schedule fires through the relay, pauses, resumes and stops.

One stack for the module, with retention shrunk to seconds through the environment.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import _reset
from tests.support.exposition import parse, value
from tests.support.infra import Infra, free_port
from tests.support.stack import Stack

ECHO = "app.tasks.example.echo"
FLAKY = "app.tasks.example.flaky"
RELAY_METRICS_PORT = free_port()
TIME_ENV = {
    "RETAIN_SUCCEEDED_SECONDS": "2",
    "PRUNE_INTERVAL_SECONDS": "1",
    "RELAY_METRICS_PORT": str(RELAY_METRICS_PORT),
}


@pytest.fixture(scope="module")
def time_stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _reset(infra)
    stack = Stack(workdir=Path(tmp_path_factory.mktemp("time")), env=dict(os.environ) | TIME_ENV)
    try:
        stack.start_all()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def conveyor(time_stack: Stack) -> Stack:
    _reset_schedules(time_stack)
    return time_stack


def _reset_schedules(stack: Stack) -> None:
    with stack.client() as client:
        for schedule in client.get("/api/v1/schedules?limit=200").json()["items"]:
            client.delete(f"/api/v1/schedules/{schedule['name']}")


def wait_until(check: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def scheduled_jobs(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get(f"/api/v1/jobs?schedule={name}&limit=200").json()["items"]
    return items


def test_a_succeeded_job_is_pruned_within_seconds_and_a_dead_and_a_delayed_job_stay(conveyor: Stack) -> None:
    done = conveyor.post_job(ECHO, {"message": "short-lived"})
    dead = conveyor.post_job(FLAKY, {"fail_times": 1, "permanent": True})
    delayed = conveyor.post_job(ECHO, {"message": "later"}, delay_seconds=3600)
    conveyor.wait_for([done, dead], timeout=30)
    with conveyor.client() as client:
        gone_after = wait_until(
            lambda: client.get(f"/api/v1/jobs/{done}").status_code == 404, timeout=20, what="the job pruned"
        )
        time.sleep(2.5)  # two more pruning passes
        kept = {job_id: client.get(f"/api/v1/jobs/{job_id}") for job_id in (dead, delayed)}
    print(
        f"\na succeeded job was gone {gone_after:.1f}s after it succeeded (retention 2 s, passes every 1 s)"
    )
    assert kept[dead].status_code == 200
    assert kept[dead].json()["state"] == "dead"
    assert kept[delayed].status_code == 200
    assert kept[delayed].json()["state"] == "queued"
    metrics = httpx.get(f"http://127.0.0.1:{RELAY_METRICS_PORT}/metrics", timeout=5).text
    assert value(parse(metrics), "conveyor_pruned_jobs_total", state="succeeded") >= 1


def test_a_schedule_fires_through_the_relay_stops_while_paused_and_ends_when_deleted(conveyor: Stack) -> None:
    body = {"name": "every-second", "task": FLAKY, "payload": {"fail_times": 1, "permanent": True}}
    with conveyor.client() as client:
        created = client.post("/api/v1/schedules", json=body | {"every_seconds": 1})
        assert created.status_code == 201, created.text
        wait_until(lambda: len(scheduled_jobs(client, "every-second")) >= 3, timeout=20, what="three ticks")
        ran = conveyor.wait_for([scheduled_jobs(client, "every-second")[-1]["id"]], timeout=30)
        assert next(iter(ran.values()))["attempts"] == 1, "its jobs run on the workers"

        assert client.post("/api/v1/schedules/every-second/pause").json()["paused"] is True
        made_before_pause = len(scheduled_jobs(client, "every-second"))
        time.sleep(2.5)
        assert len(scheduled_jobs(client, "every-second")) == made_before_pause, (
            "a paused schedule fires nothing"
        )

        resumed_at = datetime.now(UTC)
        client.post("/api/v1/schedules/every-second/resume")
        wait_until(
            lambda: len(scheduled_jobs(client, "every-second")) >= made_before_pause + 2,
            timeout=20,
            what="ticks again",
        )
        jobs = scheduled_jobs(client, "every-second")
        ticks = sorted(datetime.fromisoformat(job["scheduled_for"]) for job in jobs)
        assert len(ticks) == len(set(ticks)), "one job per tick"
        new_ticks = ticks[made_before_pause:]
        assert min(new_ticks).timestamp() > resumed_at.timestamp() - 1, (
            "what it missed while paused never fired"
        )

        assert client.delete("/api/v1/schedules/every-second").status_code == 204
        made = len(scheduled_jobs(client, "every-second"))
        time.sleep(2.5)
        assert len(scheduled_jobs(client, "every-second")) == made, "a deleted schedule stops"
        assert client.get("/api/v1/schedules/every-second").status_code == 404
