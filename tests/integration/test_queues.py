"""Queues and task limits through every face: the API, the CLI and the dashboard, each action
written to the audit log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from app.cli.commands import cli
from tests.integration.test_dashboard import BASE, SAME_ORIGIN, sign_in
from tests.support.infra import Infra
from tests.support.keys import full_key, make_key

pytestmark = pytest.mark.anyio


def audited(infra: Infra, action: str) -> list[tuple[str, str]]:
    with psycopg.connect(infra.libpq_url) as conn:
        rows = conn.execute("SELECT key_name, target FROM audit_log WHERE action = %s ORDER BY id", (action,))
        return [(str(name), str(target)) for name, target in rows]


@pytest.fixture(autouse=True)
def fresh_audit_log(clean_ledger: Infra) -> None:
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        conn.execute("TRUNCATE audit_log")


def paused(infra: Infra) -> set[str]:
    with psycopg.connect(infra.libpq_url) as conn:
        return {str(row[0]) for row in conn.execute("SELECT queue FROM paused_queues")}


@pytest.fixture
async def dashboard(clean_ledger: Infra) -> AsyncIterator[httpx.AsyncClient]:
    from app.asgi import create_app
    from app.ledger.engines import dispose_async_engines

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app()), base_url=BASE) as client:
        yield client
    await dispose_async_engines()


async def test_the_tasks_list_shows_each_tasks_limits(api: httpx.AsyncClient) -> None:
    tasks = {task["name"]: task["limits"] for task in (await api.get("/api/v1/tasks")).json()}
    assert tasks["app.tasks.example.tenant_report"] == {
        "concurrency": 2,
        "concurrency_key": "tenant",
        "rate": None,
        "rate_key": None,
    }
    assert tasks["app.tasks.example.call_partner"]["rate"] == "5/second"
    assert tasks["app.tasks.example.echo"] == dict.fromkeys(
        ("concurrency", "concurrency_key", "rate", "rate_key")
    )


async def test_an_operator_pauses_and_resumes_a_queue_over_http_and_an_unknown_queue_is_404(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    answer = await api.post("/api/v1/queues/email/pause")
    assert answer.status_code == 200, answer.text
    assert answer.json()["paused"] is True
    listed = {q["name"]: q for q in (await api.get("/api/v1/queues")).json()}
    assert set(listed) == {"default", "email", "exports"}
    assert (listed["email"]["paused"], listed["default"]["paused"]) == (True, False)
    assert (await api.post("/api/v1/queues/email/resume")).json()["paused"] is False
    assert (await api.post("/api/v1/queues/nowhere/pause")).status_code == 404
    reader = make_key(["read"])
    refused = await api.post("/api/v1/queues/email/pause", headers={"authorization": f"Bearer {reader}"})
    assert refused.status_code == 403
    assert paused(clean_ledger) == set()
    assert [target for _, target in audited(clean_ledger, "queue.pause")] == ["email"]
    assert [target for _, target in audited(clean_ledger, "queue.resume")] == ["email"]


def test_the_cli_lists_pauses_and_resumes_queues_as_its_shell_user(clean_ledger: Infra) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["queues", "pause", "exports"]).exit_code == 0
    listed: list[dict[str, Any]] = json.loads(runner.invoke(cli, ["queues", "list", "--json"]).stdout)
    assert [q["name"] for q in listed if q["paused"]] == ["exports"]
    assert runner.invoke(cli, ["queues", "resume", "exports"]).exit_code == 0
    assert runner.invoke(cli, ["queues", "pause", "nowhere"]).exit_code != 0
    assert paused(clean_ledger) == set()
    [(who, target)] = audited(clean_ledger, "queue.pause")
    assert (who.startswith("cli:"), target) == (True, "exports")


async def test_the_dashboard_pauses_a_queue_for_an_operator_only_and_from_its_own_origin(
    dashboard: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    await sign_in(dashboard, make_key(["read"]))
    assert 'action="/dashboard/queues/default/pause"' not in (await dashboard.get("/dashboard")).text
    await sign_in(dashboard, full_key())
    assert 'action="/dashboard/queues/default/pause"' in (await dashboard.get("/dashboard")).text
    foreign = await dashboard.post(
        "/dashboard/queues/default/pause", headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    assert paused(clean_ledger) == set()
    page = await dashboard.post("/dashboard/queues/default/pause", headers=SAME_ORIGIN, follow_redirects=True)
    assert "Paused the queue" in page.text
    assert 'action="/dashboard/queues/default/resume"' in page.text
    assert paused(clean_ledger) == {"default"}
    resumed = await dashboard.post(
        "/dashboard/queues/default/resume", headers=SAME_ORIGIN, follow_redirects=True
    )
    assert "Resumed the queue" in resumed.text
    assert paused(clean_ledger) == set()
    assert len(audited(clean_ledger, "queue.pause")) == 1
