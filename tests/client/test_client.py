"""The blocking client against a live API: what DESIGN.md "A Python client" promises."""

from __future__ import annotations

import time
import uuid

import pytest
from conveyor_client import AuthError, Client, Conflict, Job, NotFound, ValidationFailed

from tests.client.conftest import CountingTransport
from tests.support.keys import full_key, make_key
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

ECHO = "app.tasks.example.echo"
SLEEP = "app.tasks.example.sleep"
SYNC = "app.tasks.example.sync_account"


def test_enqueue_then_wait_returns_the_succeeded_job_with_its_result(client: Client) -> None:
    job = client.enqueue(ECHO, {"message": "hello"})
    assert (job.task, job.state, job.duplicate) == (ECHO, "queued", False)
    assert job.wait(timeout=60) is job
    assert (job.state, job.result, job.attempts, job.last_error) == (
        "succeeded",
        {"message": "hello"},
        1,
        None,
    )
    assert job.finished
    assert job.succeeded
    assert job.created_at is not None
    assert job.finished_at is not None
    assert job.finished_at >= job.created_at


def test_get_and_refresh_read_the_whole_job_view(client: Client) -> None:
    job = client.enqueue(ECHO, {"message": "read me"}, priority=7, delay_seconds=60)
    got = client.get(job.id)
    assert isinstance(got, Job)
    assert (got.id, got.state, got.priority, got.payload) == (job.id, "queued", 7, {"message": "read me"})
    assert got.available_at is not None
    assert got.created_at is not None
    assert (got.available_at - got.created_at).total_seconds() >= 59
    assert job.payload is None  # an enqueue's answer names the job; refresh reads the rest
    assert job.refresh() is job
    assert job.payload == {"message": "read me"}
    assert client.cancel(job.id).state == "cancelled"


def test_wait_raises_timeout_error_when_time_is_up_and_polls_gently_meanwhile(live: Stack) -> None:
    transport = CountingTransport()
    with Client(live.base_url, key=full_key(), transport=transport) as client:
        job = client.enqueue(SLEEP, {"seconds": 60})
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=job.id):
            job.wait(timeout=2)
        took = time.monotonic() - started
        assert job.state in {"queued", "running"}
        client.cancel(job.id)
    assert 2 <= took < 20
    # A wait that asked the API again at once would have made hundreds of requests by now.
    polls = transport.sent.count(f"GET /api/v1/jobs/{job.id}")
    assert 1 <= polls <= 25, transport.sent


def test_wait_on_a_finished_job_answers_without_asking_again(client: Client) -> None:
    job = client.enqueue(ECHO, {"message": "once"}).wait(timeout=60)
    assert job.wait(timeout=0).state == "succeeded"


def test_a_bad_key_raises_auth_error_with_status_401_and_the_apis_detail(live: Stack) -> None:
    with Client(live.base_url, key="cvk_unknown_nonsense") as client, pytest.raises(AuthError) as refused:
        client.get(str(uuid.uuid4()))
    assert refused.value.status == 401
    assert isinstance(refused.value.detail, str)
    assert refused.value.detail
    assert refused.value.headers["www-authenticate"].startswith("Bearer")


def test_a_key_without_the_scope_raises_auth_error_with_status_403(live: Stack) -> None:
    with Client(live.base_url, key=make_key(["read"])) as client, pytest.raises(AuthError) as refused:
        client.enqueue(ECHO, {"message": "not mine to send"})
    assert refused.value.status == 403
    assert "enqueue" in str(refused.value.detail)


def test_an_invalid_payload_raises_validation_failed_naming_the_field(client: Client) -> None:
    with pytest.raises(ValidationFailed) as refused:
        client.enqueue(ECHO, {"message": 5})
    assert refused.value.status == 422
    assert ["body", "payload", "message"] in [error["loc"] for error in refused.value.detail]


def test_an_unknown_task_raises_validation_failed(client: Client) -> None:
    with pytest.raises(ValidationFailed) as refused:
        client.enqueue("app.tasks.nowhere", {})
    assert refused.value.status == 422


def test_an_unknown_job_raises_not_found(client: Client) -> None:
    with pytest.raises(NotFound) as refused:
        client.get(str(uuid.uuid4()))
    assert (refused.value.status, bool(refused.value.detail)) == (404, True)


def test_replaying_a_job_that_is_not_dead_raises_conflict(client: Client) -> None:
    job = client.enqueue(ECHO, {"message": "alive"}).wait(timeout=60)
    with pytest.raises(Conflict) as refused:
        client.replay(job.id)
    assert refused.value.status == 409


def test_cancel_stops_a_job_that_has_not_started_and_a_second_cancel_conflicts(client: Client) -> None:
    job = client.enqueue(ECHO, {"message": "never"}, delay_seconds=600)
    cancelled = client.cancel(job.id)
    assert (cancelled.id, cancelled.state, cancelled.finished) == (job.id, "cancelled", True)
    with pytest.raises(Conflict):
        client.cancel(job.id)


def test_enqueue_many_makes_the_jobs_in_order_and_they_all_finish(client: Client) -> None:
    messages = [f"batch-{i}" for i in range(5)]
    jobs = client.enqueue_many(ECHO, [{"message": m} for m in messages], priority=3)
    assert len({job.id for job in jobs}) == 5
    assert [job.state for job in jobs] == ["queued"] * 5
    assert [job.wait(timeout=60).result for job in jobs] == [{"message": m} for m in messages]
    assert {job.priority for job in jobs} == {3}


def test_enqueue_many_is_all_or_nothing_and_names_the_bad_item(client: Client) -> None:
    tag = uuid.uuid4().hex
    with pytest.raises(ValidationFailed) as refused:
        client.enqueue_many(ECHO, [{"message": tag}, {"message": tag}, {"message": 3}])
    assert ["body", "jobs", 2, "payload", "message"] in [error["loc"] for error in refused.value.detail]


def test_a_unique_task_in_flight_answers_the_job_there_as_a_duplicate(client: Client) -> None:
    account = f"acct-{uuid.uuid4().hex[:8]}"
    first = client.enqueue(SYNC, {"account": account, "seconds": 2})
    second = client.enqueue(SYNC, {"account": account, "seconds": 0})
    assert (first.duplicate, second.duplicate, second.id) == (False, True, first.id)
    assert second.wait(timeout=60).result == {"account": account, "synced": 2}


def test_the_unique_key_option_makes_any_task_one_at_a_time(client: Client) -> None:
    key = f"k-{uuid.uuid4().hex[:8]}"
    first = client.enqueue(ECHO, {"message": "one"}, unique_key=key, delay_seconds=600)
    second = client.enqueue(ECHO, {"message": "two"}, unique_key=key)
    assert (second.duplicate, second.id) == (True, first.id)
    assert not second.replayed, "a unique key's holder is a duplicate, not a replayed answer"
    client.cancel(first.id)
    assert client.enqueue(ECHO, {"message": "three"}, unique_key=key).duplicate is False


def test_the_same_idempotency_key_answers_the_first_job(client: Client) -> None:
    key = uuid.uuid4().hex
    first = client.enqueue(ECHO, {"message": "once"}, idempotency_key=key)
    again = client.enqueue(ECHO, {"message": "once"}, idempotency_key=key)
    assert (again.id, again.duplicate, first.duplicate) == (first.id, True, False)
    assert (first.replayed, again.replayed) == (False, True)
    assert client.get(first.id).replayed is False


def test_the_same_idempotency_key_on_a_batch_answers_the_first_batch_replayed(client: Client) -> None:
    key = uuid.uuid4().hex
    payloads = [{"message": f"batch-once-{i}"} for i in range(3)]
    first = client.enqueue_many(ECHO, payloads, idempotency_key=key, delay_seconds=600)
    again = client.enqueue_many(ECHO, payloads, idempotency_key=key, delay_seconds=600)
    assert [job.id for job in again] == [job.id for job in first]
    assert [job.replayed for job in first] == [False] * 3
    assert [job.replayed for job in again] == [True] * 3
    assert [client.cancel(job.id).state for job in first] == ["cancelled"] * 3
