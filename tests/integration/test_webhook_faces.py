"""Webhooks through the other faces: given a dead delivery, I expect the dashboard to list it with a
Replay button for an operator only (from its own origin), the CLI to make, list, show, replay and
delete, each action audited; and the metrics to count deliveries by outcome and show the depths.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from app.cli.commands import cli
from tests.integration.test_dashboard import SAME_ORIGIN, dashboard, sign_in  # noqa: F401  (fixture)
from tests.integration.test_webhooks import (
    audited,
    dispatching,
    enqueue,
    fan_out,
    fast,
    record_event,
    settled,
)
from tests.support.infra import Infra
from tests.support.keys import full_key, make_key
from tests.support.receiver import receiving

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def fresh_audit_log(clean_ledger: Infra) -> None:
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        conn.execute("TRUNCATE audit_log")


def dead_count() -> float:
    return REGISTRY.get_sample_value("conveyor_webhook_deliveries_total", {"outcome": "dead"}) or 0.0


async def test_a_dead_delivery_shows_on_the_dashboard_and_an_operator_replays_it_there(
    api: httpx.AsyncClient,
    dashboard: httpx.AsyncClient,  # noqa: F811  (the fixture imported above)
    clean_ledger: Infra,
) -> None:
    with receiving(500) as receiver:
        answer = await api.post("/api/v1/webhooks", json={"url": receiver.url(), "events": ["job.dead"]})
        hook = answer.json()
        dead_before = dead_count()
        with dispatching(fast(webhook_max_attempts=1)):
            record_event(clean_ledger, await enqueue(api), "dead")
            dead = await settled(api, hook["id"], "dead")
        assert dead_count() == dead_before + 1
        replay = f"/dashboard/webhooks/{hook['id']}/deliveries/{dead['id']}/replay"
        await sign_in(dashboard, make_key(["read"]))
        page = await dashboard.get("/dashboard/webhooks")
        assert page.status_code == 200
        assert receiver.url() in page.text
        assert "HTTP 500" in page.text
        assert f'action="{replay}"' not in page.text, "no button for a key that only reads"
        assert (await dashboard.post(replay, headers=SAME_ORIGIN)).status_code == 403
        await sign_in(dashboard, full_key())
        assert f'action="{replay}"' in (await dashboard.get("/dashboard/webhooks")).text
        assert (await dashboard.post(replay, headers={"Origin": "https://evil.example"})).status_code == 403
        receiver.answer(200)
        done = await dashboard.post(replay, headers=SAME_ORIGIN, follow_redirects=True)
        assert "will be sent again" in done.text
        with dispatching(fast()):
            await settled(api, hook["id"], "delivered")
    assert len(audited(clean_ledger, "webhook.replay")) == 1
    metrics = (await api.get("/metrics")).text
    assert "conveyor_webhook_deliveries_pending 0.0" in metrics
    assert "conveyor_webhook_deliveries_dead 0.0" in metrics


def test_the_cli_makes_lists_shows_replays_and_deletes_webhooks(clean_ledger: Infra) -> None:
    runner = CliRunner()
    made = runner.invoke(
        cli, ["webhooks", "create", "http://127.0.0.1:9/cli", "--events", "job.dead,job.succeeded"]
    )
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("whsec_")
    [listed] = json.loads(runner.invoke(cli, ["webhooks", "list", "--json"]).stdout)
    assert listed["url"] == "http://127.0.0.1:9/cli"
    assert listed["events"] == ["job.dead", "job.succeeded"]
    assert secret not in runner.invoke(cli, ["webhooks", "list"]).stdout
    hook_id = listed["id"]
    job_id = _job(clean_ledger)
    record_event(clean_ledger, job_id, "dead")
    fan_out(1)
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE webhook_deliveries SET state = 'dead', attempts = 10, last_error = 'HTTP 500: no'"
        )
    page: dict[str, Any] = json.loads(
        runner.invoke(cli, ["webhooks", "deliveries", hook_id, "--json"]).stdout
    )
    [delivery] = page["items"]
    assert (delivery["state"], delivery["job_id"]) == ("dead", job_id)
    assert "HTTP 500" in runner.invoke(cli, ["webhooks", "deliveries", hook_id, "--state", "dead"]).stdout
    replayed = runner.invoke(cli, ["webhooks", "replay", hook_id, str(delivery["id"])])
    assert replayed.exit_code == 0, replayed.output
    again = runner.invoke(cli, ["webhooks", "replay", hook_id, str(delivery["id"])])
    assert again.exit_code == 1
    assert "pending" in again.output
    refused = runner.invoke(cli, ["webhooks", "create", "http://127.0.0.1:9/", "--events", "job.exploded"])
    assert refused.exit_code == 1
    assert "job.exploded" in refused.output
    assert runner.invoke(cli, ["webhooks", "delete", hook_id]).exit_code == 0
    assert runner.invoke(cli, ["webhooks", "delete", hook_id]).exit_code == 1
    assert [
        action
        for action in ("webhook.create", "webhook.replay", "webhook.delete")
        if audited(clean_ledger, action)
    ] == [
        "webhook.create",
        "webhook.replay",
        "webhook.delete",
    ]
    assert audited(clean_ledger, "webhook.create")[0][0].startswith("cli:")


def _job(infra: Infra) -> str:
    """A job for the events to name, made as `conveyor enqueue` makes one (it prints the id)."""
    out = CliRunner().invoke(cli, ["enqueue", "app.tasks.example.echo", "--payload", '{"message": "hi"}'])
    assert out.exit_code == 0, out.output
    return out.stdout.strip().splitlines()[-1]
