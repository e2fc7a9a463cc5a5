"""Flow control across processes: one api, one relay and TWO worker processes, the limits held
by the ledger whatever worker claims. Each test keys its jobs apart, so they share one stack."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.infra import Infra
from tests.support.stack import Stack

REPORT = "app.tasks.example.tenant_report"
PARTNER = "app.tasks.example.call_partner"
ECHO = "app.tasks.example.echo"


@pytest.fixture(scope="module")
def two_workers(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from tests.conftest import _reset

    _reset(infra)
    stack = Stack(workdir=Path(tmp_path_factory.mktemp("flow")), env=dict(os.environ))
    try:
        stack.start_api()
        stack.start_relay()
        stack.start_worker("worker", threads=4)
        stack.start_worker("worker-2", threads=4)
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def post_many(stack: Stack, task: str, payloads: list[dict[str, Any]]) -> list[str]:
    with stack.client() as client:
        response = client.post(
            "/api/v1/jobs/batch", json={"jobs": [{"task": task, "payload": p} for p in payloads]}
        )
    assert response.status_code == 202, response.text
    return [str(job["id"]) for job in response.json()["jobs"]]


class Sampler:
    """Reads, every 20 ms while it runs, how many jobs of each concurrency key are running."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.most: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT concurrency_key, count(*) FROM jobs WHERE task = %s AND state = 'running'"
                    " GROUP BY concurrency_key",
                    (REPORT,),
                ).fetchall()
                for key, running in rows:
                    self.most[key] = max(self.most[key], running)
                time.sleep(0.02)


def test_no_more_than_the_concurrency_of_a_key_run_across_two_workers_and_another_key_is_not_kept_waiting(
    two_workers: Stack, infra: Infra
) -> None:
    with Sampler(infra.libpq_url) as sampler:
        backlog = post_many(two_workers, REPORT, [{"tenant": "big", "seconds": 0.25}] * 12)
        time.sleep(0.3)
        [single] = post_many(two_workers, REPORT, [{"tenant": "small", "seconds": 0.25}])
        done = two_workers.wait_for([*backlog, single], timeout=30)
    assert {job["state"] for job in done.values()} == {"succeeded"}
    assert all(job["attempts"] == 1 for job in done.values()), "nothing fails or retries for a limit"
    assert sampler.most["big"] == 2, "two at once, never more, whichever worker claimed them"
    small_started = done[single]["started_at"]
    big_after = [job_id for job_id in backlog if done[job_id]["started_at"] > small_started]
    assert len(big_after) >= 6, "the other tenant's job started while most of the backlog waited"


def test_starts_per_window_never_exceed_the_rate_across_two_workers_and_none_fails(
    two_workers: Stack, infra: Infra
) -> None:
    ids = post_many(two_workers, PARTNER, [{"partner": "bank"}] * 16 + [{"partner": "shop"}] * 4)
    done = two_workers.wait_for(ids, timeout=30)
    assert {job["state"] for job in done.values()} == {"succeeded"}
    assert all(job["attempts"] == 1 for job in done.values())
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        windows = conn.execute(
            "SELECT rate_key, floor(extract(epoch FROM started_at)) AS second, count(*) FROM jobs"
            " WHERE task = %s GROUP BY 1, 2",
            (PARTNER,),
        ).fetchall()
    assert max(count for _, _, count in windows) <= 5, windows
    assert len([w for w in windows if w[0] == "bank"]) >= 4, "16 starts at 5 a second take 4 windows"


def test_a_paused_queue_keeps_what_is_posted_and_runs_it_all_once_resumed(two_workers: Stack) -> None:
    with two_workers.client() as client:
        paused = client.post("/api/v1/queues/default/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json()["paused"] is True
        try:
            ids = post_many(two_workers, ECHO, [{"message": f"m{i}"} for i in range(20)])
            time.sleep(1.5)
            waiting = [two_workers.job(job_id)["state"] for job_id in ids]
            assert set(waiting) == {"queued"}, "accepted, and nothing started"
            [default] = [q for q in client.get("/api/v1/queues").json() if q["name"] == "default"]
            assert default["paused"] is True
            assert default["depth"] >= 20
            metrics = client.get("/metrics").text
            assert 'conveyor_queue_paused{queue="default"} 1.0' in metrics
        finally:
            resumed = client.post("/api/v1/queues/default/resume")
        assert resumed.status_code == 200, resumed.text
        assert client.post("/api/v1/queues/nowhere/pause").status_code == 404
        audit = client.get("/api/v1/audit", params={"action": "queue.pause"}).json()
    done = two_workers.wait_for(ids, timeout=20)
    assert {job["state"] for job in done.values()} == {"succeeded"}, "nothing lost, nothing stuck"
    assert [entry["target"] for entry in audit["items"]][:1] == ["default"]
