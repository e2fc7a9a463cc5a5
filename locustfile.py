"""HTTP load with Locust: clients post echo jobs and follow their status.

    CONVEYOR_KEY=cvk_… .venv/bin/locust -f locustfile.py --host http://127.0.0.1:8000 \\
        --headless --users 50 --spawn-rate 10 --run-time 1m

The key (enqueue and read scopes) comes from CONVEYOR_KEY, as for `conveyor loadtest`.

Locust measures the HTTP side (requests/s, latencies, failures). Whether every accepted
job also finished is what `conveyor loadtest` checks.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, task

ECHO_TASK = "app.tasks.example.echo"
# Each user remembers its last few jobs to poll; a bound keeps memory flat in long runs.
REMEMBERED_JOBS = 50


class JobClient(HttpUser):
    """Posts a job, then now and then asks how one of its recent jobs is doing."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.job_ids: list[str] = []
        self.client.headers["Authorization"] = f"Bearer {os.environ.get('CONVEYOR_KEY', '')}"

    @task(3)
    def post_job(self) -> None:
        body = {"task": ECHO_TASK, "payload": {"message": "locust"}}
        with self.client.post("/api/v1/jobs", json=body, name="POST /api/v1/jobs", catch_response=True) as r:
            if r.status_code != 202:
                r.failure(f"expected 202, got {r.status_code}: {r.text[:200]}")
                return
            self.job_ids.append(r.json()["id"])
            del self.job_ids[:-REMEMBERED_JOBS]

    @task(1)
    def get_status(self) -> None:
        if not self.job_ids:
            return
        job_id = random.choice(self.job_ids)
        with self.client.get(
            f"/api/v1/jobs/{job_id}", name="GET /api/v1/jobs/{id}", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"expected 200, got {r.status_code}")
            elif r.json()["state"] == "dead":
                r.failure(f"job {job_id} went dead: {r.json()['last_error']}")
