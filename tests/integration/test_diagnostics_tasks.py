"""Diagnostics tasks are never public: with DIAGNOSTIC_TASKS on, workers and Python code have
them, and no HTTP client can enqueue, schedule or even list them."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.settings import get_settings
from tests.integration.conftest import count_jobs
from tests.support.infra import Infra
from tests.support.seed import job_row

EFFECT = "app.tasks.diagnostics.effect"
DIAGNOSTICS = {EFFECT, "app.tasks.diagnostics.side_effect", "app.tasks.diagnostics.parent"}


@pytest.fixture
def diagnostics_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DIAGNOSTIC_TASKS", "true")
    get_settings.cache_clear()
    import app.tasks.diagnostics  # noqa: F401  (registers them, as `import app.tasks` does when on)

    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.mark.anyio
async def test_a_diagnostics_task_is_refused_over_http_and_not_listed(
    diagnostics_on: None, api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    from app.jobs.registry import get_task

    assert {name for name in DIAGNOSTICS if get_task(name) is not None} == DIAGNOSTICS, "workers have them"

    for task in sorted(DIAGNOSTICS):
        refused = await api.post("/api/v1/jobs", json={"task": task, "payload": {}})
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["type"] == "unknown_task"
        assert task not in refused.json()["detail"][0]["msg"].split("known tasks:")[-1]
    scheduled = await api.post(
        "/api/v1/schedules", json={"name": "crash-often", "task": EFFECT, "payload": {}, "every_seconds": 60}
    )
    assert scheduled.status_code == 422, scheduled.text
    listed = {task["name"] for task in (await api.get("/api/v1/tasks")).json()}
    assert "app.tasks.example.echo" in listed
    assert listed & DIAGNOSTICS == set()
    document = (await api.get("/openapi.json")).text
    assert "app.tasks.diagnostics" not in document
    assert count_jobs(clean_ledger) == 0


def test_python_code_enqueues_a_diagnostics_task(diagnostics_on: None, clean_ledger: Infra) -> None:
    from app.tasks.diagnostics import effect

    job = effect.enqueue_sync({"sleep_seconds": 0})
    assert job_row(clean_ledger, job.id) == {"state": "queued", "run": 1, "attempts": 0}
