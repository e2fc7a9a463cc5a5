"""The published API, as a client outside the compose network sees it.

Every request of the compose tests goes through `Api`, which sends `Authorization: Bearer`
whenever it holds a key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

TERMINAL = frozenset({"succeeded", "dead", "cancelled"})
REQUEST_TIMEOUT_SECONDS = 10.0


@dataclass
class Api:
    base_url: str
    key: str | None = None

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS)

    def get(self, path: str, **params: str | int) -> httpx.Response:
        with self.client() as client:
            return client.get(path, params=params)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        with self.client() as client:
            return client.post(path, json=body)

    def post_job(self, task: str, payload: dict[str, Any]) -> str:
        response = self.post("/api/v1/jobs", {"task": task, "payload": payload})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def ready(self) -> tuple[int, dict[str, Any]]:
        response = self.get("/health/ready")
        return response.status_code, dict(response.json())

    def wait_for(
        self, job_ids: Iterable[str], states: Iterable[str] = TERMINAL, timeout: float = 60.0
    ) -> dict[str, dict[str, Any]]:
        """Poll until every job is in one of `states`; the jobs as the API shows them then."""
        wanted = set(states)
        pending = list(job_ids)
        done: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while pending:
                still = []
                for job_id in pending:
                    try:
                        body = client.get(f"/api/v1/jobs/{job_id}").json()
                    except httpx.HTTPError:
                        body = {}
                    if body.get("state") in wanted:
                        done[job_id] = body
                    else:
                        still.append(job_id)
                pending = still
                if pending and time.monotonic() > deadline:
                    raise AssertionError(
                        f"{len(pending)} of {len(done) + len(pending)} jobs not in {sorted(wanted)}"
                        f" after {timeout}s, e.g. {self.job(pending[0])}"
                    )
                if pending:
                    time.sleep(0.25)
        return done

    def wait_until_answering(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.get("/health/live").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the API at {self.base_url} did not answer within {timeout}s")
            time.sleep(0.5)


@dataclass
class Poster:
    """Posts a job every `interval` seconds from a thread, keeping each 202's id and when it came."""

    api: Api
    task: str
    payload: dict[str, Any]
    interval: float = 0.1
    accepted: list[tuple[str, float]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Poster:
        self._thread = threading.Thread(target=self._run, name="compose-poster", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    @property
    def ids(self) -> list[str]:
        return [job_id for job_id, _ in self.accepted]

    def accepted_between(self, start: float, end: float) -> int:
        return sum(1 for _, at in self.accepted if start <= at <= end)

    def _run(self) -> None:
        body = {"task": self.task, "payload": self.payload}
        with self.api.client() as client:
            while not self._stop.wait(self.interval):
                try:
                    response = client.post("/api/v1/jobs", json=body)
                except httpx.HTTPError as error:
                    self.refused.append(type(error).__name__)
                    continue
                if response.status_code == 202:
                    self.accepted.append((str(response.json()["id"]), time.monotonic()))
                else:
                    self.refused.append(f"{response.status_code} {response.text[:200]}")
