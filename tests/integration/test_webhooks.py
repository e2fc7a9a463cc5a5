"""Webhooks, given a subscription and a receiver on this machine, I expect each matching event to
arrive signed as documented, retried with the same event id until a 2xx, dead after the last
attempt, replayable; targets refused in production unless allowed, and again at delivery time;
the routes guarded by scope and audited.

The fan-out and the sender run in this process (`Dispatcher`, as the relay process runs them),
with short backoffs. Events are the rows of `job_events` a state change writes; where a test
needs a given state, it writes that row itself for a job made through the API.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import anyio
import httpx
import orjson
import psycopg
import pytest

from app.settings import Settings, get_settings
from app.webhooks import targets
from app.webhooks.dispatch import Dispatcher
from tests.integration.conftest import bearer
from tests.support.infra import Infra
from tests.support.keys import make_key
from tests.support.receiver import receiving, verify

pytestmark = pytest.mark.anyio

ECHO = "app.tasks.example.echo"
FLAKY = "app.tasks.example.flaky"


@pytest.fixture(autouse=True)
def fresh_audit_log(clean_ledger: Infra) -> None:
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        conn.execute("TRUNCATE audit_log")


def fast(**changes: Any) -> Settings:
    """This run's settings with backoffs of milliseconds."""
    quick = {
        "webhook_backoff_base": 0.05,
        "webhook_backoff_max": 0.2,
        "webhook_poll_seconds": 0.05,
        "webhook_timeout_seconds": 3.0,
    }
    return get_settings().model_copy(update={**quick, **changes})


@contextmanager
def dispatching(settings: Settings) -> Iterator[Dispatcher]:
    stop = threading.Event()
    dispatcher = Dispatcher(settings)
    dispatcher.start(stop)
    try:
        yield dispatcher
    finally:
        stop.set()
        dispatcher.join()


async def subscribe(
    api: httpx.AsyncClient, url: str, events: list[str], task: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url, "events": events}
    if task is not None:
        body["task"] = task
    answer = await api.post("/api/v1/webhooks", json=body)
    assert answer.status_code == 201, answer.text
    made: dict[str, Any] = answer.json()
    return made


async def enqueue(api: httpx.AsyncClient, task: str = ECHO) -> str:
    payload = {"message": "hello"} if task == ECHO else {"fail_times": 0}
    answer = await api.post("/api/v1/jobs", json={"task": task, "payload": payload})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def record_event(infra: Infra, job_id: str, state: str, task: str = ECHO, attempt: int = 1) -> None:
    """The event row a state change of the job writes in its transaction."""
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO job_events (job_id, task, queue, state, attempt) VALUES (%s, %s, 'default', %s, %s)",
            (job_id, task, state, attempt),
        )


def fan_out(deliveries: int) -> None:
    """Fan out until `deliveries` were made (a step may wait behind other sessions' transactions
    that the horizon cannot place), and check that no more are."""
    dispatcher, made = Dispatcher(fast()), 0
    deadline = time.monotonic() + 30
    try:
        while made < deliveries:
            assert time.monotonic() < deadline, f"{made} deliveries made, expected {deliveries}"
            made += dispatcher.fan_out_once().deliveries
    finally:
        dispatcher.close()
    assert made == deliveries


async def delivery_list(api: httpx.AsyncClient, webhook_id: str, **params: str) -> list[dict[str, Any]]:
    answer = await api.get(f"/api/v1/webhooks/{webhook_id}/deliveries", params=params)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def settled(
    api: httpx.AsyncClient, webhook_id: str, state: str, within: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        items = await delivery_list(api, webhook_id)
        if items and items[0]["state"] == state:
            return items[0]
        await anyio.sleep(0.05)
    raise AssertionError(f"no {state} delivery: {items}")


def audited(infra: Infra, action: str) -> list[tuple[str, str]]:
    with psycopg.connect(infra.libpq_url) as conn:
        rows = conn.execute("SELECT key_name, target FROM audit_log WHERE action = %s ORDER BY id", (action,))
        return [(str(name), str(target)) for name, target in rows]


async def test_a_receiver_that_fails_twice_gets_the_same_signed_event_three_times_then_it_is_delivered(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    with receiving(500, 503, 200) as receiver:
        hook = await subscribe(api, receiver.url(), ["job.succeeded"])
        job_id = await enqueue(api)
        with dispatching(fast()):
            record_event(clean_ledger, job_id, "succeeded")
            delivered = await settled(api, hook["id"], "delivered")
            received = receiver.wait_for(3)
    assert delivered["attempts"] == 3
    assert delivered["last_status"] == 200
    assert len(received) == 3, "nothing more once it was delivered"
    assert {r.headers["conveyor-event-id"] for r in received} == {delivered["event_id"]}
    for request in received:
        assert request.headers["content-type"] == "application/json"
        assert verify(hook["secret"], request.headers["conveyor-signature"], request.body)
        assert not verify("whsec_another", request.headers["conveyor-signature"], request.body)
        assert not verify(hook["secret"], request.headers["conveyor-signature"], request.body + b" ")
    event = orjson.loads(received[0].body)
    assert event["id"] == delivered["event_id"]
    assert event["type"] == "job.succeeded"
    assert event["created"].endswith("Z")
    assert event["data"]["id"] == job_id
    assert event["data"]["state"] == "succeeded"
    assert event["data"]["task"] == ECHO
    assert event["data"]["payload"] == {"message": "hello"}
    assert received[0].body == received[2].body, "every attempt carries the same body"


async def test_a_delivery_that_fails_every_attempt_is_dead_and_kept_and_a_replay_delivers_it(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    with receiving(500) as receiver:
        hook = await subscribe(api, receiver.url(), ["job.dead"])
        job_id = await enqueue(api)
        with dispatching(fast(webhook_max_attempts=2)):
            record_event(clean_ledger, job_id, "dead")
            dead = await settled(api, hook["id"], "dead")
            assert dead["attempts"] == 2
            assert dead["last_status"] == 500
            assert "HTTP 500" in dead["last_error"]
            listed = (await api.get(f"/api/v1/webhooks/{hook['id']}")).json()
            assert listed["dead"] == 1
            receiver.answer(200)
            replay = await api.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{dead['id']}/replay")
            assert replay.status_code == 202, replay.text
            delivered = await settled(api, hook["id"], "delivered")
            received = receiver.wait_for(3)
    assert delivered["id"] == dead["id"]
    assert delivered["attempts"] == 1, "a replay counts its attempts from the first again"
    assert received[-1].headers["conveyor-event-id"] == dead["event_id"]
    assert verify(hook["secret"], received[-1].headers["conveyor-signature"], received[-1].body)
    assert len(audited(clean_ledger, "webhook.replay")) == 1
    again = await api.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{dead['id'] + 1000}/replay")
    assert again.status_code == 404


async def test_a_pending_delivery_cannot_be_replayed(api: httpx.AsyncClient, clean_ledger: Infra) -> None:
    hook = await subscribe(api, "http://127.0.0.1:9/never", ["job.succeeded"])
    record_event(clean_ledger, await enqueue(api), "succeeded")
    fan_out(1)  # made, never sent: no sender runs
    [pending] = await delivery_list(api, hook["id"], state="pending")
    answer = await api.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{pending['id']}/replay")
    assert answer.status_code == 409
    assert "pending" in answer.json()["detail"]


async def test_each_subscription_gets_only_its_events_and_its_task(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    everything = await subscribe(api, "http://127.0.0.1:9/a", ["job.succeeded", "job.dead", "job.retrying"])
    echo_only = await subscribe(api, "http://127.0.0.1:9/b", ["job.succeeded"], task=ECHO)
    dead_only = await subscribe(api, "http://127.0.0.1:9/c", ["job.dead"])
    echo, flaky = await enqueue(api), await enqueue(api, FLAKY)
    record_event(clean_ledger, echo, "running")
    record_event(clean_ledger, echo, "succeeded")
    record_event(clean_ledger, flaky, "retrying", task=FLAKY)
    record_event(clean_ledger, flaky, "succeeded", task=FLAKY, attempt=2)
    record_event(clean_ledger, flaky, "dead", task=FLAKY, attempt=3)
    fan_out(4 + 1 + 1)

    def kinds(hook: dict[str, Any], items: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return sorted((item["type"], item["job_id"]) for item in items)

    assert kinds(everything, await delivery_list(api, everything["id"])) == sorted(
        [("job.succeeded", echo), ("job.retrying", flaky), ("job.succeeded", flaky), ("job.dead", flaky)]
    )
    assert kinds(echo_only, await delivery_list(api, echo_only["id"])) == [("job.succeeded", echo)]
    assert kinds(dead_only, await delivery_list(api, dead_only["id"])) == [("job.dead", flaky)]
    again = Dispatcher(fast())
    try:
        assert again.fan_out_once().deliveries == 0, "an event is fanned out once"
    finally:
        again.close()


async def test_a_subscription_gets_no_event_made_before_it(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    job_id = await enqueue(api)
    record_event(clean_ledger, job_id, "succeeded")
    hook = await subscribe(api, "http://127.0.0.1:9/late", ["job.succeeded"])
    record_event(clean_ledger, job_id, "succeeded", attempt=2)
    fan_out(1)
    assert [item["job_id"] for item in await delivery_list(api, hook["id"])] == [job_id], "the later one only"


async def test_unknown_event_types_and_tasks_are_refused_naming_them(api: httpx.AsyncClient) -> None:
    answer = await api.post(
        "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/", "events": ["job.exploded"]}
    )
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "events"]
    assert "job.exploded" in answer.json()["detail"][0]["msg"]
    answer = await api.post(
        "/api/v1/webhooks",
        json={"url": "http://127.0.0.1:9/", "events": ["job.dead"], "task": "app.tasks.nope"},
    )
    assert answer.status_code == 422
    assert "app.tasks.nope" in answer.text
    answer = await api.post("/api/v1/webhooks", json={"url": "ftp://example.com/", "events": ["job.dead"]})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "url"]


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    database_url, broker_url = get_settings().database_url, get_settings().broker_url
    monkeypatch.setenv("DATABASE_URL", database_url.replace("postgres@", "postgres:not-dev@"))
    monkeypatch.setenv("BROKER_URL", broker_url.replace("guest:guest@", "guest:not-dev@"))
    monkeypatch.setenv("ENVIRONMENT", "production")
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


async def test_production_refuses_http_and_private_targets_unless_webhook_allow_private(
    api: httpx.AsyncClient, production: pytest.MonkeyPatch
) -> None:
    async def create(url: str) -> httpx.Response:
        return await api.post("/api/v1/webhooks", json={"url": url, "events": ["job.dead"]})

    refused_http = await create("http://example.com/hook")
    assert refused_http.status_code == 422
    assert "https" in refused_http.json()["detail"][0]["msg"]
    for url, reason in (
        ("https://127.0.0.1/hook", "loopback"),
        ("https://localhost/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://169.254.169.254/latest", "link-local"),
        ("https://0.0.0.0/", "unspecified"),
        ("https://[::ffff:192.168.0.1]/", "private"),
        ("https://224.0.0.1/", "multicast"),
    ):
        answer = await create(url)
        assert answer.status_code == 422, url
        assert reason in answer.json()["detail"][0]["msg"], (url, answer.text)
    production.setenv("WEBHOOK_ALLOW_PRIVATE", "true")
    get_settings.cache_clear()
    assert (await create("https://127.0.0.1/hook")).status_code == 201
    assert (await create("https://10.1.2.3/hook")).status_code == 201
    assert (await create("http://10.1.2.3/hook")).status_code == 422, "still https only in production"


async def test_a_target_that_resolves_to_a_private_address_at_delivery_time_is_not_called(
    api: httpx.AsyncClient, clean_ledger: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name resolved to a public address when the subscription was made, and
    resolves to this machine when the delivery is sent."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers, ["127.0.0.1"])

    monkeypatch.setattr(targets, "resolve", rebinding)
    with receiving(200) as receiver:
        guarded = fast(webhook_allow_private=False, webhook_max_attempts=1)
        await targets.check_url(receiver.url(host="rebinding.example"), guarded)  # allowed when made
        hook = await subscribe(api, receiver.url(host="rebinding.example"), ["job.succeeded"])
        record_event(clean_ledger, await enqueue(api), "succeeded")
        with dispatching(guarded):
            dead = await settled(api, hook["id"], "dead")
        assert receiver.received == []
    assert dead["last_status"] is None
    assert "loopback" in dead["last_error"]


async def test_the_sender_connects_to_the_address_it_checked(
    api: httpx.AsyncClient, clean_ledger: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name only the check can resolve is reached: the connection goes to the checked address,
    not to a second lookup of the name (which would fail), and the Host header keeps the name."""

    async def only_here(host: str, port: int) -> list[str]:
        assert host == "receiver.invalid"
        return ["127.0.0.1"]

    monkeypatch.setattr(targets, "resolve", only_here)
    with receiving(200) as receiver:
        hook = await subscribe(api, receiver.url(host="receiver.invalid"), ["job.succeeded"])
        record_event(clean_ledger, await enqueue(api), "succeeded")
        with dispatching(fast()):
            await settled(api, hook["id"], "delivered")
        [request] = receiver.received
    assert request.headers["host"] == f"receiver.invalid:{receiver.port}"


async def test_only_operate_keys_subscribe_replay_and_delete_and_read_keys_never_see_a_secret(
    api: httpx.AsyncClient, anonymous: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    hook = await subscribe(api, "http://127.0.0.1:9/x", ["job.succeeded"])
    enqueue_only, reader = bearer(make_key(["enqueue"])), bearer(make_key(["read"]))
    body = {"url": "http://127.0.0.1:9/y", "events": ["job.dead"]}
    base = f"/api/v1/webhooks/{hook['id']}"
    assert (await anonymous.post("/api/v1/webhooks", json=body)).status_code == 401
    for headers in (enqueue_only, reader):
        assert (await anonymous.post("/api/v1/webhooks", json=body, headers=headers)).status_code == 403
        assert (await anonymous.delete(base, headers=headers)).status_code == 403
        assert (await anonymous.post(f"{base}/deliveries/1/replay", headers=headers)).status_code == 403
    assert (await anonymous.get("/api/v1/webhooks", headers=enqueue_only)).status_code == 403
    assert (await anonymous.get(base, headers=enqueue_only)).status_code == 403
    listed = await anonymous.get("/api/v1/webhooks", headers=reader)
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()] == [hook["id"]]
    assert hook["secret"].startswith("whsec_")
    assert hook["secret"] not in listed.text
    assert hook["secret"] not in (await anonymous.get(base, headers=reader)).text


async def test_creating_and_deleting_a_subscription_are_audited_and_deleting_stops_its_deliveries(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    hook = await subscribe(api, "http://127.0.0.1:9/x", ["job.succeeded"])
    record_event(clean_ledger, await enqueue(api), "succeeded")
    fan_out(1)
    assert len(await delivery_list(api, hook["id"])) == 1
    assert (await api.delete(f"/api/v1/webhooks/{hook['id']}")).status_code == 204
    assert (await api.get(f"/api/v1/webhooks/{hook['id']}")).status_code == 404
    assert (await api.delete(f"/api/v1/webhooks/{hook['id']}")).status_code == 404
    with psycopg.connect(clean_ledger.libpq_url) as conn:
        assert conn.execute("SELECT count(*) FROM webhook_deliveries").fetchone() == (0,)
    assert audited(clean_ledger, "webhook.create") == [("test-every-scope", hook["id"])]
    assert audited(clean_ledger, "webhook.delete") == [("test-every-scope", hook["id"])]


async def test_deliveries_are_paged_newest_first_and_filtered_by_state(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    hook = await subscribe(api, "http://127.0.0.1:9/x", ["job.succeeded"])
    for _ in range(5):
        record_event(clean_ledger, await enqueue(api), "succeeded")
    fan_out(5)
    first = (await api.get(f"/api/v1/webhooks/{hook['id']}/deliveries", params={"limit": 3})).json()
    second = (
        await api.get(
            f"/api/v1/webhooks/{hook['id']}/deliveries", params={"limit": 3, "cursor": first["next_cursor"]}
        )
    ).json()
    ids = [item["id"] for item in first["items"] + second["items"]]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 5
    assert second["next_cursor"] is None
    assert await delivery_list(api, hook["id"], state="dead") == []
    assert len(await delivery_list(api, hook["id"], state="pending")) == 5
    bad = await api.get(f"/api/v1/webhooks/{hook['id']}/deliveries", params={"cursor": "x"})
    assert bad.status_code == 422
    missing = await api.get(f"/api/v1/webhooks/{UUID(int=1)}/deliveries")
    assert missing.status_code == 404


async def test_a_job_run_to_success_is_told_to_its_subscriber_with_its_result(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    """The events the ledger's own statements write (accepted, claimed, succeeded): no event row
    written by the test."""
    from app.ledger import jobs as ledger
    from tests.support.running import claim

    with receiving(200) as receiver:
        hook = await subscribe(api, receiver.url(), ["job.running", "job.succeeded"], task=ECHO)
        job_id = await enqueue(api)
        token = claim(clean_ledger, job_id, ECHO).token
        with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
            assert ledger.succeed(conn, [(token, '{"message": "hello"}')]) == [True]
        with dispatching(fast()):
            [request, *_] = [r for r in receiver.wait_for(2) if b"job.succeeded" in r.body]
    event = orjson.loads(request.body)
    assert event["type"] == "job.succeeded"
    assert event["data"]["id"] == job_id
    assert event["data"]["result"] == {"message": "hello"}
    assert event["data"]["attempts"] == 1
    assert verify(hook["secret"], request.headers["conveyor-signature"], request.body)
    types = sorted(orjson.loads(r.body)["type"] for r in receiver.received)
    assert types == ["job.running", "job.succeeded"]
