"""The schedule routes in process: create, read, list, pause, resume, delete; what they refuse;
the job view's schedule fields and filter; and the idempotency window."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.infra import Infra

pytestmark = pytest.mark.anyio

ECHO = "app.tasks.example.echo"


def every(name: str = "tick", seconds: int = 60, **fields: Any) -> dict[str, Any]:
    return {"name": name, "task": ECHO, "payload": {"message": "tick"}, "every_seconds": seconds, **fields}


def add_scheduled_job(infra: Infra, schedule: str, tick: datetime) -> str:
    job_id = uuid.uuid4()
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (id, task, queue, payload, state, max_attempts, schedule, scheduled_for)"
            " VALUES (%s, %s, 'default', '{\"message\": \"tick\"}', 'queued', 5, %s, %s)",
            (job_id, ECHO, schedule, tick),
        )
    return str(job_id)


@pytest.fixture
def short_key_window(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    from app.settings import get_settings

    monkeypatch.setenv("IDEMPOTENCY_KEY_TTL_SECONDS", "1")
    get_settings.cache_clear()
    yield 1.0
    monkeypatch.undo()
    get_settings.cache_clear()


async def test_a_schedule_is_created_with_its_next_run_and_read_back(api: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    created = await api.post("/api/v1/schedules", json=every(seconds=60))
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/api/v1/schedules/tick"
    body = created.json()
    assert {
        k: body[k] for k in ("name", "task", "every_seconds", "cron", "timezone", "paused", "source")
    } == {
        "name": "tick",
        "task": ECHO,
        "every_seconds": 60,
        "cron": None,
        "timezone": "UTC",
        "paused": False,
        "source": "api",
    }
    next_run = datetime.fromisoformat(body["next_run_at"])
    assert before < next_run <= before + timedelta(seconds=61)
    assert next_run.second == 0, "every 60 s ticks on the minute"
    assert body["last_run_at"] is None
    assert body["jobs_url"] == "/api/v1/jobs?schedule=tick"
    assert (await api.get("/api/v1/schedules/tick")).json() == body


async def test_a_cron_schedule_runs_next_on_its_zones_wall_clock(api: httpx.AsyncClient) -> None:
    body = {"name": "nightly", "task": ECHO, "payload": {"message": "hi"}, "cron": "0 3 * * *"}
    created = (await api.post("/api/v1/schedules", json=body | {"timezone": "Asia/Tokyo"})).json()
    next_run = datetime.fromisoformat(created["next_run_at"])
    assert next_run.astimezone(UTC).hour == 18, "03:00 in Tokyo is 18:00 UTC"
    assert created["cron"] == "0 3 * * *"


async def test_schedules_are_listed_by_name_a_page_at_a_time(api: httpx.AsyncClient) -> None:
    for name in ("c", "a", "b"):
        assert (await api.post("/api/v1/schedules", json=every(name))).status_code == 201
    first = (await api.get("/api/v1/schedules?limit=2")).json()
    assert [s["name"] for s in first["items"]] == ["a", "b"]
    rest = (await api.get(f"/api/v1/schedules?limit=2&cursor={first['next_cursor']}")).json()
    assert [s["name"] for s in rest["items"]] == ["c"]
    assert rest["next_cursor"] is None
    assert (await api.get("/api/v1/schedules?cursor=!!")).status_code == 422


async def test_a_schedule_is_paused_resumed_and_deleted(api: httpx.AsyncClient, clean_ledger: Infra) -> None:
    await api.post("/api/v1/schedules", json=every(seconds=1))
    paused = await api.post("/api/v1/schedules/tick/pause")
    assert paused.status_code == 200
    assert paused.json()["paused"] is True
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        conn.execute("UPDATE schedules SET next_run_at = now() - interval '1 hour'")
    resumed = (await api.post("/api/v1/schedules/tick/resume")).json()
    assert resumed["paused"] is False
    assert datetime.fromisoformat(resumed["next_run_at"]) > datetime.now(UTC) - timedelta(seconds=1), (
        "the ticks missed while paused never fire"
    )
    deleted = await api.delete("/api/v1/schedules/tick")
    assert deleted.status_code == 204
    assert deleted.content == b""
    for answer in (
        await api.get("/api/v1/schedules/tick"),
        await api.delete("/api/v1/schedules/tick"),
        await api.post("/api/v1/schedules/tick/pause"),
        await api.post("/api/v1/schedules/tick/resume"),
    ):
        assert answer.status_code == 404
        assert "not found" in answer.json()["detail"]


async def test_a_taken_schedule_name_is_409(api: httpx.AsyncClient) -> None:
    assert (await api.post("/api/v1/schedules", json=every())).status_code == 201
    taken = await api.post("/api/v1/schedules", json=every(seconds=5))
    assert taken.status_code == 409
    assert "exists already" in taken.json()["detail"]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"every_seconds": None, "cron": "61 * * * *"}, ["body", "cron"]),
        ({"every_seconds": None, "cron": "every minute"}, ["body", "cron"]),
        ({"cron": "* * * * *"}, ["body"]),
        ({"every_seconds": None}, ["body"]),
        ({"every_seconds": 0}, ["body", "every_seconds"]),
        ({"every_seconds": True}, ["body", "every_seconds"]),
        ({"every_seconds": "60"}, ["body", "every_seconds"]),
        ({"timezone": "Mars/Olympus"}, ["body", "timezone"]),
        ({"task": "app.tasks.example.nope"}, ["body", "task"]),
        ({"payload": {}}, ["body", "payload", "message"]),
        ({"payload": {"message": 5}}, ["body", "payload", "message"]),
        ({"payload": {"message": "hi", "extra": 1}}, ["body", "payload", "extra"]),
        ({"payload": {"message": "nul\u0000"}}, ["body", "payload", "message"]),
        ({"name": "a/b"}, ["body", "name"]),
        ({"name": ""}, ["body", "name"]),
        ({"unknown": 1}, ["body", "unknown"]),
    ],
)
async def test_an_invalid_schedule_is_422_naming_the_field_and_nothing_is_stored(
    api: httpx.AsyncClient, change: dict[str, Any], where: list[str]
) -> None:
    body = {key: value for key, value in (every() | change).items() if value is not None}
    refused = await api.post("/api/v1/schedules", json=body)
    assert refused.status_code == 422, refused.text
    assert where in [error["loc"] for error in refused.json()["detail"]], refused.json()
    assert (await api.get("/api/v1/schedules")).json()["items"] == []


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """At most 5 schedules, none ticking more often than every 2 minutes."""
    from app.settings import get_settings

    monkeypatch.setenv("MAX_SCHEDULES", "5")
    monkeypatch.setenv("MIN_SCHEDULE_INTERVAL_SECONDS", "120")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


async def test_twenty_concurrent_creates_past_max_schedules_make_exactly_that_many(
    limits: None, api: httpx.AsyncClient
) -> None:
    answers = await asyncio.gather(
        *(api.post("/api/v1/schedules", json=every(f"s{n}", seconds=300)) for n in range(20))
    )
    assert sorted(answer.status_code for answer in answers) == [201] * 5 + [409] * 15
    refused = next(answer for answer in answers if answer.status_code == 409)
    assert "MAX_SCHEDULES" in refused.json()["detail"]
    made = [item["name"] for item in (await api.get("/api/v1/schedules")).json()["items"]]
    assert len(made) == 5
    assert (await api.delete(f"/api/v1/schedules/{made[0]}")).status_code == 204
    again = await api.post("/api/v1/schedules", json=every("after-a-delete", seconds=300))
    assert again.status_code == 201, "a delete makes room"


@pytest.mark.parametrize(
    ("timing", "field"),
    [
        ({"every_seconds": 119}, "every_seconds"),
        ({"every_seconds": 1}, "every_seconds"),
        ({"every_seconds": None, "cron": "* * * * *"}, "cron"),
        ({"every_seconds": None, "cron": "0,1 3 * * *"}, "cron"),
        ({"every_seconds": None, "cron": "59 23 * * *"}, None),
        ({"every_seconds": None, "cron": "0,59 0,23 * * *"}, "cron"),
        ({"every_seconds": None, "cron": "*/2 * * * *"}, None),
        ({"every_seconds": 120}, None),
    ],
)
async def test_a_schedule_that_ticks_more_often_than_the_minimum_is_422_naming_its_field(
    limits: None, api: httpx.AsyncClient, timing: dict[str, Any], field: str | None
) -> None:
    body = {key: value for key, value in (every() | timing).items() if value is not None}
    answer = await api.post("/api/v1/schedules", json=body)
    if field is None:
        assert answer.status_code == 201, answer.text
        return
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", field]
    assert "MIN_SCHEDULE_INTERVAL_SECONDS" in error["msg"]
    assert (await api.get("/api/v1/schedules")).json()["items"] == []


async def test_the_document_says_what_a_409_and_a_422_of_a_new_schedule_mean(api: httpx.AsyncClient) -> None:
    answers = (await api.get("/openapi.json")).json()["paths"]["/api/v1/schedules"]["post"]["responses"]
    assert "MAX_SCHEDULES" in answers["409"]["description"]
    assert "MIN_SCHEDULE_INTERVAL_SECONDS" in answers["422"]["description"]


async def test_a_path_that_cannot_name_a_schedule_is_422(api: httpx.AsyncClient) -> None:
    assert (await api.get("/api/v1/schedules/-x")).status_code == 422


async def test_a_scheduled_job_shows_its_schedule_and_tick_and_the_list_filters_by_schedule(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    tick = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    made = [add_scheduled_job(clean_ledger, "tick", tick + timedelta(minutes=n)) for n in range(3)]
    add_scheduled_job(clean_ledger, "other", tick)
    plain = (await api.post("/api/v1/jobs", json={"task": ECHO, "payload": {"message": "hi"}})).json()["id"]
    job = (await api.get(f"/api/v1/jobs/{made[0]}")).json()
    assert (job["schedule"], datetime.fromisoformat(job["scheduled_for"])) == ("tick", tick)
    unscheduled = (await api.get(f"/api/v1/jobs/{plain}")).json()
    assert (unscheduled["schedule"], unscheduled["scheduled_for"]) == (None, None)
    listed = (await api.get("/api/v1/jobs?schedule=tick&limit=200")).json()["items"]
    assert sorted(item["id"] for item in listed) == sorted(made)


async def test_a_repeated_key_returns_the_first_job_inside_its_window_and_makes_a_new_one_after(
    api: httpx.AsyncClient, short_key_window: float
) -> None:
    body = {"task": ECHO, "payload": {"message": "once a window"}}
    headers = {"Idempotency-Key": "window-1"}
    first = await api.post("/api/v1/jobs", json=body, headers=headers)
    again = await api.post("/api/v1/jobs", json=body, headers=headers)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    await asyncio.sleep(short_key_window + 0.5)
    after = await api.post("/api/v1/jobs", json=body, headers=headers)
    assert after.status_code == 202
    assert "Idempotent-Replayed" not in after.headers
    assert after.json()["id"] != first.json()["id"], "the window has passed: a new job"
    repeated = await api.post("/api/v1/jobs", json=body, headers=headers)
    assert repeated.json()["id"] == after.json()["id"], "and the new job holds the key now"
    other_body = await api.post("/api/v1/jobs", json={**body, "payload": {"message": "x"}}, headers=headers)
    assert other_body.status_code == 422, "inside the new window, another body is refused again"
    assert (await api.get(f"/api/v1/jobs/{first.json()['id']}")).status_code == 200, "the first job stays"


async def test_a_key_whose_first_job_was_pruned_makes_a_new_job(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    body = {"task": ECHO, "payload": {"message": "pruned"}}
    headers = {"Idempotency-Key": "pruned-1"}
    first = (await api.post("/api/v1/jobs", json=body, headers=headers)).json()["id"]
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        conn.execute("DELETE FROM jobs WHERE id = %s", (first,))
    after = await api.post("/api/v1/jobs", json=body, headers=headers)
    assert after.status_code == 202
    assert after.json()["id"] != first
