"""Workflows over HTTP and in Python: declared whole or refused whole, in the caller's transaction,
seen only by the client that made them, and drawn by the dashboard as their graph."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text

from app.errors import InvalidWorkflow
from app.execution.writes import LedgerWrites
from app.jobs.workflows import Workflow
from app.ledger.engines import sync_engine
from app.tasks.example import echo, gather
from tests.integration.conftest import bearer, count_jobs
from tests.support.infra import Infra
from tests.support.keys import make_key
from tests.support.running import claim, run

pytestmark = pytest.mark.anyio

ECHO = "app.tasks.example.echo"
GATHER = "app.tasks.example.gather"


def step(message: str, *after: str) -> dict[str, Any]:
    return {"task": ECHO, "payload": {"message": message}, "after": list(after)}


DIAMOND = {
    "name": "diamond",
    "steps": {
        "a": step("a"),
        "b": step("b", "a"),
        "c": step("c", "a"),
        "d": {"task": GATHER, "payload": {}, "after": ["b", "c"]},
    },
}


def count_workflows(infra: Infra) -> int:
    with psycopg.connect(infra.libpq_url) as conn:
        found = conn.execute("SELECT count(*) FROM workflows").fetchone()
        assert found is not None
        return int(found[0])


async def test_a_diamond_runs_each_step_after_its_upstream_and_the_last_sees_both_results(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    answer = await api.post("/api/v1/workflows", json=DIAMOND)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["state"] == "running"
    assert answer.headers["location"] == body["status_url"] == f"/api/v1/workflows/{body['id']}"
    steps = body["steps"]
    view = (await api.get(body["status_url"])).json()
    assert {name: s["state"] for name, s in view["steps"].items()} == {
        "a": "queued",
        "b": "waiting",
        "c": "waiting",
        "d": "waiting",
    }
    assert list(view["steps"]) == ["a", "b", "c", "d"], "by depth, then name"
    assert view["steps"]["d"]["after"] == ["b", "c"]
    job = (await api.get(f"/api/v1/jobs/{steps['d']}")).json()
    assert (job["workflow_id"], job["step"], job["state"]) == (body["id"], "d", "waiting")
    for name in ("a", "b", "c"):
        assert run(clean_ledger, steps[name], ECHO) == ("succeeded", {"message": name})
    assert run(clean_ledger, steps["d"], GATHER) == (
        "succeeded",
        {"upstream": {"b": {"message": "b"}, "c": {"message": "c"}}},
    )
    view = (await api.get(body["status_url"])).json()
    assert view["state"] == "succeeded"
    assert view["counts"] == {"succeeded": 4}
    listed = (await api.get("/api/v1/workflows", params={"state": "succeeded"})).json()
    assert [w["id"] for w in listed["items"]] == [body["id"]]
    assert (await api.get("/api/v1/workflows", params={"state": "running"})).json()["items"] == []


@pytest.mark.parametrize(
    ("steps", "loc"),
    [
        ({"a": step("a", "c"), "b": step("b", "a"), "c": step("c", "b")}, ["body", "steps", "b", "after", 0]),
        ({"a": step("a"), "d": step("d", "a", "nope")}, ["body", "steps", "d", "after", 1]),
        ({"a": step("a", "a")}, ["body", "steps", "a", "after", 0]),
        ({"a": {"task": ECHO, "payload": {"message": 5}}}, ["body", "steps", "a", "payload", "message"]),
        ({"a": {"task": "app.tasks.nope", "payload": {}}}, ["body", "steps", "a", "task"]),
    ],
    ids=["cycle", "unknown-after", "self", "invalid-payload", "unknown-task"],
)
async def test_an_invalid_workflow_is_a_422_naming_the_problem_and_stores_nothing(
    api: httpx.AsyncClient, clean_ledger: Infra, steps: dict[str, Any], loc: list[Any]
) -> None:
    answer = await api.post("/api/v1/workflows", json={"name": "bad", "steps": {"ok": step("fine"), **steps}})
    assert answer.status_code == 422, answer.text
    assert [problem["loc"] for problem in answer.json()["detail"]] == [loc]
    assert count_jobs(clean_ledger) == 0
    assert count_workflows(clean_ledger) == 0


async def test_a_workflow_has_at_most_max_workflow_steps(
    api: httpx.AsyncClient, clean_ledger: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.settings import get_settings

    monkeypatch.setattr(get_settings(), "max_workflow_steps", 3)
    steps = {f"s{i}": step(str(i)) for i in range(4)}
    answer = await api.post("/api/v1/workflows", json={"name": "big", "steps": steps})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "steps"]
    assert count_jobs(clean_ledger) == 0


def test_a_workflow_made_in_a_transaction_that_rolls_back_leaves_nothing(clean_ledger: Infra) -> None:
    flow = Workflow("rolled back").step("a", echo, {"message": "a"}).step("b", gather, {}, after=["a"])
    with sync_engine().connect() as conn, conn.begin() as transaction:
        accepted = flow.enqueue_sync(session=conn)
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 2
        transaction.rollback()
    assert set(accepted.steps) == {"a", "b"}
    assert count_jobs(clean_ledger) == 0
    assert count_workflows(clean_ledger) == 0
    with sync_engine().begin() as conn:
        Workflow("kept").step("a", echo, {"message": "a"}).enqueue_sync(session=conn)
    assert (count_jobs(clean_ledger), count_workflows(clean_ledger)) == (1, 1)


def test_python_refuses_a_cycle_before_anything_is_stored(clean_ledger: Infra) -> None:
    flow = (
        Workflow("loop")
        .step("a", echo, {"message": "a"}, after=["b"])
        .step("b", echo, {"message": "b"}, after=["a"])
    )
    with pytest.raises(InvalidWorkflow) as refused:
        flow.enqueue_sync()
    assert [problem["loc"] for problem in refused.value.errors] == [("steps", "b", "after", 0)]
    assert "cycle: a after b after a" in str(refused.value)
    assert count_jobs(clean_ledger) == 0


async def test_an_enqueue_key_sees_only_its_own_workflows_and_a_read_key_every_one(
    anonymous: httpx.AsyncClient,
) -> None:
    mine, other, reader = make_key(["enqueue"]), make_key(["enqueue"]), make_key(["read"])
    made = await anonymous.post("/api/v1/workflows", json=DIAMOND, headers=bearer(mine))
    workflow_id = made.json()["id"]
    assert (await anonymous.get(f"/api/v1/workflows/{workflow_id}", headers=bearer(mine))).status_code == 200
    refused = await anonymous.get(f"/api/v1/workflows/{workflow_id}", headers=bearer(other))
    assert refused.status_code == 404, "another client's workflow does not exist for this key"
    assert (await anonymous.get("/api/v1/workflows", headers=bearer(other))).json()["items"] == []
    step_id = made.json()["steps"]["a"]
    assert (await anonymous.get(f"/api/v1/jobs/{step_id}", headers=bearer(other))).status_code == 404
    seen = (await anonymous.get("/api/v1/workflows", headers=bearer(reader))).json()["items"]
    assert [w["id"] for w in seen] == [workflow_id]


async def test_a_dead_step_cancels_its_downstream_and_a_replay_over_http_lets_the_workflow_succeed(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    body = (await api.post("/api/v1/workflows", json=DIAMOND)).json()
    steps = body["steps"]
    for name in ("a", "c"):
        run(clean_ledger, steps[name], ECHO)
    ctx = claim(clean_ledger, steps["b"], ECHO)
    assert LedgerWrites().bury(ctx.token, "PermanentError: boom"), "as the worker buries it"
    view = (await api.get(body["status_url"])).json()
    assert view["state"] == "failed"
    assert view["steps"]["d"]["state"] == "cancelled"
    assert view["steps"]["d"]["last_error"] == "upstream b dead"
    assert (await api.post(f"/api/v1/jobs/{steps['b']}/replay")).status_code == 202
    view = (await api.get(body["status_url"])).json()
    assert (view["state"], view["steps"]["d"]["state"]) == ("running", "waiting")
    run(clean_ledger, steps["b"], ECHO)
    assert run(clean_ledger, steps["d"], GATHER)[0] == "succeeded"
    assert (await api.get(body["status_url"])).json()["state"] == "succeeded"


async def test_the_dashboard_draws_a_workflow_as_its_graph_of_linked_boxes_and_arrows(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    body = (await api.post("/api/v1/workflows", json=DIAMOND)).json()
    run(clean_ledger, body["steps"]["a"], ECHO)
    listed = await api.get("/dashboard/workflows")
    assert listed.status_code == 200
    assert f'href="/dashboard/workflows/{body["id"]}"' in listed.text
    page = await api.get(f"/dashboard/workflows/{body['id']}")
    assert page.status_code == 200
    svg = page.text[page.text.index('<svg id="workflow-graph"') : page.text.index("</svg>")]
    for name, job_id in body["steps"].items():
        assert f'href="/dashboard/jobs/{job_id}" data-step="{name}"' in svg
    assert 'class="step state-succeeded" href="/dashboard/jobs/{}"'.format(body["steps"]["a"]) in svg
    assert svg.count('class="step state-waiting"') == 1, "d waits; b and c are queued"
    assert svg.count('<path class="arrow"') == 4, "one arrow for each `after`"
    assert "style=" not in svg, "no inline style (CSP)"
    assert "<script" not in page.text.split("</head>")[1], "no inline script (CSP)"
    job = await api.get(f"/dashboard/jobs/{body['steps']['d']}")
    assert f'href="/dashboard/workflows/{body["id"]}"' in job.text


def test_a_prune_pass_takes_a_finished_workflow_with_its_steps_and_leaves_a_running_one(
    clean_ledger: Infra,
) -> None:
    from app.relay.pruning import prune

    finished = (
        Workflow("old").step("a", echo, {"message": "a"}).step("b", gather, {}, after=["a"]).enqueue_sync()
    )
    running = (
        Workflow("live").step("a", echo, {"message": "a"}).step("b", gather, {}, after=["a"]).enqueue_sync()
    )
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET state = 'succeeded', finished_at = now() - interval '40 days'"
            " WHERE workflow_id = %s",
            (finished.id,),
        )
        conn.execute(
            "UPDATE workflows SET finished_at = now() - interval '40 days' WHERE id = %s", (finished.id,)
        )
        conn.execute(
            "UPDATE jobs SET finished_at = now() - interval '40 days', state = 'succeeded'"
            " WHERE workflow_id = %s AND step = 'a'",
            (running.id,),
        )
    done = prune()
    assert done.workflows == 1
    assert done.jobs["succeeded"] == 0, "no step was pruned alone"
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        left = conn.execute("SELECT workflow_id, count(*) FROM jobs GROUP BY workflow_id").fetchall()
    assert left == [(running.id, 2)]
