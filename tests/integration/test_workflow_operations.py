"""Operating workflows through every face: an Idempotency-Key on POST /api/v1/workflows, a whole
workflow cancelled (API, dashboard, CLI, each audited), `conveyor workflows list|show|cancel`,
and a dead step discarded from the dashboard."""

from __future__ import annotations

import json
from typing import Any

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from app.cli.commands import cli
from app.execution.writes import LedgerWrites
from app.jobs.context import JobContext
from app.jobs.workflows import Workflow
from app.tasks.example import echo, gather
from tests.integration.conftest import bearer
from tests.integration.test_workflows import DIAMOND, ECHO, count_workflows, step
from tests.support.infra import Infra
from tests.support.keys import make_key
from tests.support.running import claim, run

pytestmark = pytest.mark.anyio

SAME_ORIGIN = {"Origin": "http://conveyor.test"}


def conveyor(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def audited(infra: Infra, workflow_id: str) -> list[int | None]:
    """The counts of the `workflow.cancel` entries about this workflow."""
    with psycopg.connect(infra.libpq_url) as conn:
        rows = conn.execute(
            "SELECT count FROM audit_log WHERE action = 'workflow.cancel' AND target = %s ORDER BY id",
            (workflow_id,),
        ).fetchall()
    return [r[0] for r in rows]


async def started(api: httpx.AsyncClient, infra: Infra) -> tuple[dict[str, Any], JobContext]:
    """A diamond whose a has succeeded and whose b runs (this context): c queued, d waiting."""
    body: dict[str, Any] = (await api.post("/api/v1/workflows", json=DIAMOND)).json()
    run(infra, body["steps"]["a"], ECHO)
    return body, claim(infra, body["steps"]["b"], ECHO)


# -- Idempotency-Key -------------------------------------------------------------------------


async def test_the_same_idempotency_key_and_body_answer_the_first_workflow(
    anonymous: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    mine, other = make_key(["enqueue"]), make_key(["enqueue"])
    keyed = {**bearer(mine), "Idempotency-Key": "nightly-2026-12-07"}
    first = await anonymous.post("/api/v1/workflows", json=DIAMOND, headers=keyed)
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    again = await anonymous.post("/api/v1/workflows", json=DIAMOND, headers=keyed)
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert count_workflows(clean_ledger) == 1
    theirs = await anonymous.post(
        "/api/v1/workflows", json=DIAMOND, headers={**bearer(other), "Idempotency-Key": "nightly-2026-12-07"}
    )
    assert theirs.json()["id"] != first.json()["id"], "a key belongs to its client"
    assert count_workflows(clean_ledger) == 2


async def test_the_same_idempotency_key_with_another_body_is_refused_and_stores_nothing(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    keyed = {"Idempotency-Key": "k-1"}
    assert (await api.post("/api/v1/workflows", json=DIAMOND, headers=keyed)).status_code == 202
    changed = {**DIAMOND, "steps": {**DIAMOND["steps"], "a": step("another")}}
    refused = await api.post("/api/v1/workflows", json=changed, headers=keyed)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    job = await api.post("/api/v1/jobs", json={"task": ECHO, "payload": {"message": "x"}}, headers=keyed)
    assert job.status_code == 422, "a job may not take a workflow's key either"
    too_long = await api.post("/api/v1/workflows", json=DIAMOND, headers={"Idempotency-Key": "k" * 256})
    assert too_long.status_code == 422
    assert count_workflows(clean_ledger) == 1


# -- cancel over HTTP ------------------------------------------------------------------------


async def test_cancelling_a_workflow_over_http_cancels_its_steps_asks_the_running_one_and_is_audited(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    body, b = await started(api, clean_ledger)
    answer = await api.post(f"/api/v1/workflows/{body['id']}/cancel")
    assert answer.status_code == 202, "b runs: its worker is asked to stop it"
    view = answer.json()
    assert {name: s["state"] for name, s in view["steps"].items()} == {
        "a": "succeeded",
        "b": "running",
        "c": "cancelled",
        "d": "cancelled",
    }
    assert view["steps"]["c"]["last_error"] == "workflow cancelled"
    assert audited(clean_ledger, body["id"]) == [2]
    job = (await api.get(f"/api/v1/jobs/{body['steps']['b']}")).json()
    assert job["cancel_requested_at"] is not None
    assert LedgerWrites().cancelled(b.token, "cancelled"), "as b's worker ends it"
    finished = (await api.get(body["status_url"])).json()
    assert finished["state"] == "failed"
    ended = await api.post(f"/api/v1/workflows/{body['id']}/cancel")
    assert ended.status_code == 409, "every step has finished"
    assert audited(clean_ledger, body["id"]) == [2], "a refusal is no action"


async def test_an_enqueue_key_cancels_only_its_own_workflows_and_a_read_key_none(
    anonymous: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    mine, other, reader = make_key(["enqueue"]), make_key(["enqueue"]), make_key(["read"])
    made = (await anonymous.post("/api/v1/workflows", json=DIAMOND, headers=bearer(mine))).json()
    url = f"/api/v1/workflows/{made['id']}/cancel"
    assert (await anonymous.post(url, headers=bearer(other))).status_code == 404
    assert (await anonymous.post(url, headers=bearer(reader))).status_code == 403
    answer = await anonymous.post(url, headers=bearer(mine))
    assert answer.status_code == 200, answer.text
    assert set(answer.json()["counts"]) == {"cancelled"}
    missing = "/api/v1/workflows/00000000-0000-0000-0000-000000000000/cancel"
    assert (await anonymous.post(missing, headers=bearer(mine))).status_code == 404


# -- the dashboard ---------------------------------------------------------------------------


async def dashboard(clean_ledger: Infra, api: httpx.AsyncClient) -> httpx.AsyncClient:
    from tests.support.keys import full_key

    signed = await api.post(
        "/dashboard/login", data={"key": full_key(), "next": "/dashboard"}, headers=SAME_ORIGIN
    )
    assert signed.status_code == 303, signed.text
    return api


async def test_the_dashboard_cancels_a_running_workflow_from_its_page(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    body, _ = await started(api, clean_ledger)
    page = f"/dashboard/workflows/{body['id']}"
    client = await dashboard(clean_ledger, api)
    assert f'action="{page}/cancel"' in (await client.get(page)).text
    done = await client.post(
        f"{page}/cancel", data={"next": page}, headers=SAME_ORIGIN, follow_redirects=True
    )
    assert "Cancelled the workflow" in done.text
    view = (await api.get(body["status_url"])).json()
    assert (view["steps"]["c"]["state"], view["steps"]["d"]["state"]) == ("cancelled", "cancelled")
    assert audited(clean_ledger, body["id"]) == [2]
    again = await client.post(
        f"{page}/cancel", data={"next": page}, headers=SAME_ORIGIN, follow_redirects=True
    )
    assert "Nothing done: every step of the workflow has finished" not in again.text, "b still runs"
    reader = make_key(["read"])
    looked = await api.get(page, headers={**bearer(reader), "cookie": ""})
    assert looked.status_code == 200
    assert 'id="workflow-graph"' in looked.text
    assert f'action="{page}/cancel"' not in looked.text, "a read key sees no button"


async def test_discarding_a_dead_step_from_the_dashboard_cancels_its_downstream_for_good(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    body = (await api.post("/api/v1/workflows", json=DIAMOND)).json()
    for name in ("a", "c"):
        run(clean_ledger, body["steps"][name], ECHO)
    ctx = claim(clean_ledger, body["steps"]["b"], ECHO)
    assert LedgerWrites().bury(ctx.token, "PermanentError: boom")
    client = await dashboard(clean_ledger, api)
    job = f"/dashboard/jobs/{body['steps']['b']}"
    discarded = await client.post(f"{job}/discard", data={"next": "/dashboard/dead"}, headers=SAME_ORIGIN)
    assert discarded.status_code == 303
    view = (await api.get(body["status_url"])).json()
    assert view["state"] == "failed", "a workflow missing a step never succeeds"
    assert "b" not in view["steps"]
    assert (view["steps"]["d"]["state"], view["steps"]["d"]["last_error"]) == (
        "cancelled",
        "discarded upstream b",
    )


# -- the CLI ---------------------------------------------------------------------------------


def test_the_cli_lists_shows_and_cancels_workflows(clean_ledger: Infra) -> None:
    diamond = (
        Workflow("diamond")
        .step("a", echo, {"message": "a"})
        .step("b", echo, {"message": "b"}, after=["a"])
        .step("c", echo, {"message": "c"}, after=["a"])
        .step("d", gather, {}, after=["b", "c"])
        .enqueue_sync()
    )
    run(clean_ledger, diamond.steps["a"], ECHO)
    claim(clean_ledger, diamond.steps["b"], ECHO)
    one = Workflow("one").step("x", echo, {"message": "x"}).enqueue_sync()
    run(clean_ledger, one.steps["x"], ECHO)
    body, done = {"id": str(diamond.id)}, {"id": str(one.id)}
    listed = conveyor("workflows", "list", "--state", "running", "--json")
    assert listed.exit_code == 0, listed.output
    assert [w["id"] for w in json.loads(listed.output)["items"]] == [body["id"]]
    table = conveyor("workflows", "list")
    assert body["id"] in table.output
    assert done["id"] in table.output
    shown = conveyor("workflows", "show", body["id"])
    assert shown.exit_code == 0, shown.output
    cells = [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in shown.output.splitlines()
        if line.startswith("│")
    ]
    assert [row[:5] for row in cells] == [
        ["a", "0", "succeeded", ECHO, "-"],
        ["b", "1", "running", ECHO, "a"],
        ["c", "1", "queued", ECHO, "a"],
        ["d", "2", "waiting", "app.tasks.example.gather", "b, c"],
    ], "a row per step, by depth: step, depth, state, task, after"
    assert [row[5] for row in cells] == [str(diamond.steps[name]) for name in "abcd"]
    cancelled = conveyor("workflows", "cancel", body["id"])
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancelled 2 step(s)" in cancelled.output
    assert "1 running step(s)" in cancelled.output
    assert audited(clean_ledger, body["id"]) == [2]
    refused = conveyor("workflows", "cancel", done["id"])
    assert refused.exit_code == 1
    assert "every step has finished" in refused.output
    missing = conveyor("workflows", "show", "00000000-0000-0000-0000-000000000000")
    assert missing.exit_code == 1
    assert conveyor("workflows", "list", "--state", "nope").exit_code == 2
