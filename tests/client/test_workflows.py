"""The client's workflow calls against a live API, relay and worker: enqueue a workflow of steps,
read it, wait for it, send it again with its key, cancel it; blocking and asyncio alike."""

from __future__ import annotations

import uuid

import pytest
from conveyor_client import (
    AsyncClient,
    Client,
    Conflict,
    NotFound,
    Step,
    ValidationFailed,
    Workflow,
    WorkflowStep,
)

from tests.support.keys import full_key
from tests.support.stack import Stack

ECHO = "app.tasks.example.echo"
GATHER = "app.tasks.example.gather"
SLEEP = "app.tasks.example.sleep"


def diamond() -> dict[str, Step]:
    return {
        "a": Step(ECHO, {"message": "a"}),
        "b": Step(ECHO, {"message": "b"}, after=["a"]),
        "c": Step(ECHO, {"message": "c"}, after=["a"]),
        "d": Step(GATHER, after=["b", "c"]),
    }


def test_a_workflow_enqueued_answers_its_step_ids_and_waits_until_it_succeeded(client: Client) -> None:
    flow = client.enqueue_workflow("diamond", diamond())
    assert isinstance(flow, Workflow)
    assert (flow.name, flow.state) == ("diamond", "running")
    assert set(flow.job_ids) == {"a", "b", "c", "d"}
    assert flow.steps["d"] == WorkflowStep(job_id=flow.job_ids["d"]), "only ids until refreshed"
    assert flow.wait(timeout=60) is flow
    assert flow.succeeded
    assert flow.finished
    assert flow.finished_at is not None
    assert flow.counts == {"succeeded": 4}
    d = flow.steps["d"]
    assert (d.task, d.state, d.after, d.depth) == (GATHER, "succeeded", ("b", "c"), 2)
    gathered = client.get(d.job_id).result
    assert set(gathered["upstream"]) == {"b", "c"}


def test_get_workflow_reads_each_steps_state_and_a_step_may_be_its_json_body(client: Client) -> None:
    flow = client.enqueue_workflow(
        "pair",
        {"x": {"task": ECHO, "payload": {"message": "x"}}, "y": Step(ECHO, {"message": "y"}, after=["x"])},
    )
    read = client.get_workflow(flow.id)
    assert read.id == flow.id
    assert read.created_at is not None
    assert read.job_ids == flow.job_ids
    assert read.steps["y"].after == ("x",)
    assert read.steps["y"].state in {
        "waiting",
        "queued",
        "running",
        "succeeded",
    }
    assert read.raw["status_url"] == f"/api/v1/workflows/{flow.id}"


def test_the_same_key_answers_the_first_workflow_and_another_workflow_is_refused(client: Client) -> None:
    key = f"nightly-{uuid.uuid4()}"
    first = client.enqueue_workflow("diamond", diamond(), idempotency_key=key)
    again = client.enqueue_workflow("diamond", diamond(), idempotency_key=key)
    assert (again.id, again.job_ids) == (first.id, first.job_ids)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.refresh().replayed, "a refresh reads the workflow, the enqueue's answer stays said"
    assert client.get_workflow(first.id).replayed is False
    with pytest.raises(ValidationFailed) as refused:
        client.enqueue_workflow("other", diamond(), idempotency_key=key)
    assert refused.value.detail[0]["loc"] == ["header", "Idempotency-Key"]


def test_a_cycle_is_refused_naming_it_and_an_unknown_workflow_is_not_found(client: Client) -> None:
    with pytest.raises(ValidationFailed):
        client.enqueue_workflow(
            "loop",
            {"a": Step(ECHO, {"message": "a"}, after=["b"]), "b": Step(ECHO, {"message": "b"}, after=["a"])},
        )
    with pytest.raises(NotFound):
        client.get_workflow(str(uuid.uuid4()))


def test_cancel_workflow_cancels_what_has_not_started_and_stops_what_runs(client: Client) -> None:
    flow = client.enqueue_workflow(
        "long", {"slow": Step(SLEEP, {"seconds": 30}), "next": Step(ECHO, {"message": "n"}, after=["slow"])}
    )
    client.get(flow.job_ids["slow"])  # the step exists; it may or may not have started yet
    cancelled = client.cancel_workflow(flow.id)
    assert cancelled.steps["next"].state == "cancelled"
    assert cancelled.wait(timeout=30).state == "failed"
    assert cancelled.counts == {"cancelled": 2}
    with pytest.raises(Conflict):
        client.cancel_workflow(flow.id)


@pytest.mark.anyio
async def test_the_async_client_has_the_same_workflow_calls(live: Stack) -> None:
    async with AsyncClient(live.base_url, key=full_key(), timeout=30.0) as client:
        flow = await client.enqueue_workflow("diamond", diamond())
        assert (await flow.wait(timeout=60)).succeeded
        read = await client.get_workflow(flow.id)
        assert read.counts == {"succeeded": 4}
        assert read.steps["a"].depth == 0
        with pytest.raises(Conflict):
            await client.cancel_workflow(flow.id)


@pytest.mark.anyio
async def test_the_async_client_says_a_workflow_answered_again_by_its_key_is_replayed(live: Stack) -> None:
    key = f"async-nightly-{uuid.uuid4()}"
    async with AsyncClient(live.base_url, key=full_key(), timeout=30.0) as client:
        first = await client.enqueue_workflow("diamond", diamond(), idempotency_key=key)
        again = await client.enqueue_workflow("diamond", diamond(), idempotency_key=key)
    assert (again.id, again.job_ids) == (first.id, first.job_ids)
    assert (first.replayed, again.replayed) == (False, True)
