"""Unique while in flight: one queued, retrying or running job per (task, unique key), and a
duplicate answered with that job, through every door.

Jobs are posted to the API in this process (its group commit, or a transaction of their own
when they carry an Idempotency-Key), or enqueued from Python in a transaction of the test's; they
run in this process the way a worker thread runs them (`tests.support.running`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from app.ledger import jobs as ledger
from app.tasks.example import echo, sync_account
from tests.support import running
from tests.support.exposition import parse, value
from tests.support.infra import Infra
from tests.support.keys import auth, full_key, make_key

pytestmark = pytest.mark.anyio

SYNC = "app.tasks.example.sync_account"
ECHO = "app.tasks.example.echo"
BATCH = "/api/v1/jobs/batch"


def sync(account: str, seconds: float = 0.0) -> dict[str, Any]:
    return {"task": SYNC, "payload": {"account": account, "seconds": seconds}}


def jobs_of(infra: Infra, task: str = SYNC) -> list[tuple[str, str, str | None]]:
    with psycopg.connect(infra.libpq_url) as conn:
        rows = conn.execute(
            "SELECT id, state, unique_key FROM jobs WHERE task = %s ORDER BY created_at", (task,)
        ).fetchall()
    return [(str(job_id), state, key) for job_id, state, key in rows]


def key_id(key: str | None = None) -> str:
    """The id part of a key (`cvk_<id>_<secret>`): the client its jobs belong to."""
    return (key or full_key()).split("_", 2)[1]


def succeed(infra: Infra, job_id: str) -> None:
    """Claim the job and record its success as a worker does (the e2e suite runs a real one)."""
    claimed = running.claim(infra, job_id, SYNC)
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        assert ledger.succeed(conn, [(claimed.token, "{}")]) == [True]


def set_state(infra: Infra, job_id: str, state: str) -> None:
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET state = %s, finished_at = now() WHERE id = %s", (state, job_id))


async def test_twenty_concurrent_posts_for_one_key_make_one_job_and_nineteen_duplicates_of_it(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    answers = await asyncio.gather(*(api.post("/api/v1/jobs", json=sync("acme")) for _ in range(20)))
    assert [a.status_code for a in answers] == [202] * 20
    assert len({a.json()["id"] for a in answers}) == 1
    assert sorted(a.json().get("duplicate", False) for a in answers) == [False] + [True] * 19
    assert all(a.headers["Location"] == f"/api/v1/jobs/{a.json()['id']}" for a in answers)
    assert "Idempotent-Replayed" not in answers[0].headers
    [(job_id, state, key)] = jobs_of(clean_ledger)
    assert (job_id, state, key) == (answers[0].json()["id"], "queued", f"of:{key_id()}:key:acme")


async def test_twenty_concurrent_posts_each_in_a_transaction_of_its_own_make_one_job(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    # An Idempotency-Key each sends every POST through a transaction of its own, on its own
    # connection: the index, not the group commit, keeps the second job out.
    posts = (
        api.post("/api/v1/jobs", json=sync("acme"), headers={**auth(), "Idempotency-Key": f"k{i}"})
        for i in range(20)
    )
    answers = await asyncio.gather(*posts)
    assert [a.status_code for a in answers] == [202] * 20
    assert len({a.json()["id"] for a in answers}) == 1
    assert sorted(a.json().get("duplicate", False) for a in answers) == [False] + [True] * 19
    assert len(jobs_of(clean_ledger)) == 1


async def test_after_the_job_finishes_the_same_key_makes_a_new_job(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    first = (await api.post("/api/v1/jobs", json=sync("acme"))).json()
    held = (await api.post("/api/v1/jobs", json=sync("acme", 5))).json()
    assert (held["id"], held["duplicate"]) == (first["id"], True)
    succeed(clean_ledger, first["id"])
    again = (await api.post("/api/v1/jobs", json=sync("acme"))).json()
    assert (again.get("duplicate", False), again["state"]) == (False, "queued")
    assert again["id"] != first["id"]
    assert [state for _, state, _ in jobs_of(clean_ledger)] == ["succeeded", "queued"]


async def test_a_duplicate_answers_the_holders_state_and_other_keys_and_tasks_are_not_held(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    first = (await api.post("/api/v1/jobs", json=sync("acme"))).json()
    running.claim(clean_ledger, first["id"], SYNC)
    held = (await api.post("/api/v1/jobs", json=sync("acme"))).json()
    assert (held["id"], held["state"], held["duplicate"]) == (first["id"], "running", True)
    other = (await api.post("/api/v1/jobs", json=sync("globex"))).json()
    assert "duplicate" not in other
    echoed = await api.post(
        "/api/v1/jobs", json={"task": ECHO, "payload": {"message": "acme"}, "unique_key": "acme"}
    )
    assert "duplicate" not in echoed.json(), "a unique key is held per task"


@pytest.mark.parametrize("ending", ["dead", "cancelled", "succeeded"])
async def test_a_duplicate_of_a_job_that_has_ended_is_a_new_job(
    api: httpx.AsyncClient, clean_ledger: Infra, ending: str
) -> None:
    first = (await api.post("/api/v1/jobs", json=sync("acme"))).json()
    set_state(clean_ledger, first["id"], ending)
    again = (await api.post("/api/v1/jobs", json=sync("acme"))).json()
    assert again.get("duplicate", False) is False
    assert again["id"] != first["id"]


async def test_a_cancelled_holder_frees_its_key_through_the_api(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    first = (await api.post("/api/v1/jobs", json=sync("acme"))).json()
    assert (await api.post(f"/api/v1/jobs/{first['id']}/cancel")).status_code == 200
    again = (await api.post("/api/v1/jobs", json=sync("acme"))).json()
    assert (again.get("duplicate", False), again["id"] != first["id"]) == (False, True)


async def test_a_dead_unique_job_is_not_replayed_while_another_holds_its_key(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    dead = (await api.post("/api/v1/jobs", json=sync("acme"))).json()["id"]
    set_state(clean_ledger, dead, "dead")
    holder = (await api.post("/api/v1/jobs", json=sync("acme"))).json()["id"]
    refused = await api.post(f"/api/v1/jobs/{dead}/replay")
    assert (refused.status_code, refused.json()["job_id"]) == (409, holder)
    set_state(clean_ledger, holder, "succeeded")
    assert (await api.post(f"/api/v1/jobs/{dead}/replay")).status_code == 202


async def test_the_enqueue_option_makes_any_task_unique_and_overrides_the_tasks_field(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    body = {"task": ECHO, "payload": {"message": "hi"}, "unique_key": "nightly"}
    first, again = [(await api.post("/api/v1/jobs", json=body)).json() for _ in range(2)]
    assert (again["id"], again.get("duplicate", False)) == (first["id"], True)
    given = {**sync("acme"), "unique_key": "everyone"}
    one, other = [
        (await api.post("/api/v1/jobs", json=given | {"payload": p})).json()
        for p in (
            {"account": "acme", "seconds": 0},
            {"account": "globex", "seconds": 0},
        )
    ]
    assert (other["id"], other["duplicate"]) == (one["id"], True)
    assert [key for _, _, key in jobs_of(clean_ledger, ECHO)] == [f"of:{key_id()}:key:nightly"]


async def test_a_unique_key_is_the_clients_own_another_client_neither_sees_nor_holds_it(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    # An enqueue key must not learn of another client's job (its id, its state) through a
    # duplicate answer, nor keep that client's job from being made by taking its key first.
    first, second = make_key(["enqueue"]), make_key(["enqueue"])
    mine = await api.post("/api/v1/jobs", json=sync("acme", 30), headers=auth(first))
    theirs = await api.post("/api/v1/jobs", json=sync("acme", 30), headers=auth(second))
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert theirs.json()["id"] != mine.json()["id"]
    assert "duplicate" not in theirs.json()
    again = await api.post("/api/v1/jobs", json=sync("acme", 30), headers=auth(second))
    assert (again.json()["id"], again.json()["duplicate"]) == (theirs.json()["id"], True)
    batch = await api.post(BATCH, json={"jobs": [sync("acme")]}, headers=auth(first))
    assert [(j["id"], j["duplicate"]) for j in batch.json()["jobs"]] == [(mine.json()["id"], True)]
    # Each client's view shows the key as it was given.
    shown = await api.get(f"/api/v1/jobs/{theirs.json()['id']}", headers=auth(second))
    assert shown.json()["unique_key"] == "acme"
    # Python and schedules share the space of no client: a job from there is neither's.
    engine = create_engine(clean_ledger.database_url)
    try:
        with Session(engine) as session, session.begin():
            from_code = sync_account.enqueue_sync({"account": "acme", "seconds": 0}, session=session)
    finally:
        engine.dispose()
    assert not from_code.duplicate
    assert {key for _, _, key in jobs_of(clean_ledger)} == {
        f"of:{key_id(first)}:key:acme",
        f"of:{key_id(second)}:key:acme",
        "key:acme",
    }


@pytest.mark.parametrize("key", ["", "k" * 256, "nul\u0000"])
async def test_a_unique_key_that_cannot_be_one_is_422_naming_it(
    api: httpx.AsyncClient, clean_ledger: Infra, key: str
) -> None:
    response = await api.post("/api/v1/jobs", json={**sync("acme"), "unique_key": key})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] == ["body", "unique_key"]
    assert jobs_of(clean_ledger) == []


async def test_an_idempotency_key_answers_its_first_job_before_the_unique_key_is_looked_at(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    keyed = {**auth(), "Idempotency-Key": "sync-1"}
    first = await api.post("/api/v1/jobs", json=sync("acme"), headers=keyed)
    succeed(clean_ledger, first.json()["id"])
    holder = (await api.post("/api/v1/jobs", json=sync("acme"))).json()
    repeat = await api.post("/api/v1/jobs", json=sync("acme"), headers=keyed)
    assert (repeat.json()["id"], repeat.json()["state"]) == (first.json()["id"], "succeeded")
    assert repeat.json()["duplicate"] is True
    assert repeat.headers["Idempotent-Replayed"] == "true"
    other = await api.post("/api/v1/jobs", json=sync("acme"), headers={**auth(), "Idempotency-Key": "sync-2"})
    assert (other.json()["id"], other.json()["duplicate"]) == (holder["id"], True)
    assert "Idempotent-Replayed" not in other.headers


async def test_a_duplicate_counts_as_no_accepted_job(api: httpx.AsyncClient, clean_ledger: Infra) -> None:
    async def accepted() -> float:
        return value(parse((await api.get("/metrics")).text), "conveyor_jobs_accepted_total", task=SYNC)

    await api.post("/api/v1/jobs", json=sync("acme"))
    before = await accepted()
    await api.post("/api/v1/jobs", json=sync("acme"))
    await api.post(BATCH, json={"jobs": [sync("acme"), sync("globex")]})
    assert await accepted() - before == 1


async def test_a_batch_answers_each_duplicate_item_by_its_holder_and_stores_the_rest(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    holder = (await api.post("/api/v1/jobs", json=sync("acme"))).json()["id"]
    items = [
        sync("globex"),
        sync("acme"),
        sync("initech"),
        sync("initech"),
        {"task": ECHO, "payload": {"message": "x"}},
    ]
    response = await api.post(BATCH, json={"jobs": items})
    assert response.status_code == 202, response.text
    answered = response.json()["jobs"]
    assert [job.get("duplicate", False) for job in answered] == [False, True, False, True, False]
    assert answered[1]["id"] == holder
    assert answered[3]["id"] == answered[2]["id"], (
        "the second of two items with one key is the first's duplicate"
    )
    assert len({job["id"] for job in answered}) == 4
    stored = {job_id for job_id, _, _ in jobs_of(clean_ledger)}
    assert stored == {holder, answered[0]["id"], answered[2]["id"]}


async def test_a_batch_still_refuses_whole_for_an_invalid_item_whatever_its_duplicates(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    await api.post("/api/v1/jobs", json=sync("acme"))
    items = [sync("acme"), sync("globex"), {"task": SYNC, "payload": {"account": 5}}]
    response = await api.post(BATCH, json={"jobs": items})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:3] == ["body", "jobs", 2]
    assert len(jobs_of(clean_ledger)) == 1


async def test_a_keyed_batch_whose_first_items_are_duplicates_is_repeated_with_the_same_ids(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    holder = (await api.post("/api/v1/jobs", json=sync("acme"))).json()["id"]
    keyed = {**auth(), "Idempotency-Key": "batch-1"}
    body = {"jobs": [sync("acme"), sync("acme"), sync("globex"), {"task": ECHO, "payload": {"message": "x"}}]}
    first = await api.post(BATCH, json=body, headers=keyed)
    repeat = await api.post(BATCH, json=body, headers=keyed)
    ids = [job["id"] for job in first.json()["jobs"]]
    assert ids[:2] == [holder, holder]
    assert [job["id"] for job in repeat.json()["jobs"]] == ids
    assert all(job["duplicate"] for job in repeat.json()["jobs"])
    assert repeat.headers["Idempotent-Replayed"] == "true"
    assert len(jobs_of(clean_ledger)) + len(jobs_of(clean_ledger, ECHO)) == 3
    other = {"jobs": [sync("acme"), sync("globex")]}
    assert (await api.post(BATCH, json=other, headers=keyed)).status_code == 422


async def test_a_batch_of_duplicates_only_stores_nothing(api: httpx.AsyncClient, clean_ledger: Infra) -> None:
    holder = (await api.post("/api/v1/jobs", json=sync("acme"))).json()["id"]
    keyed = {**auth(), "Idempotency-Key": "batch-2"}
    response = await api.post(BATCH, json={"jobs": [sync("acme"), sync("acme")]}, headers=keyed)
    assert [(job["id"], job["duplicate"]) for job in response.json()["jobs"]] == [(holder, True)] * 2
    assert len(jobs_of(clean_ledger)) == 1


async def test_the_tasks_and_the_job_view_show_the_unique_key(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    tasks = {task["name"]: task for task in (await api.get("/api/v1/tasks")).json()}
    assert (tasks[SYNC]["unique_key"], tasks[ECHO]["unique_key"]) == ("account", None)
    job = (await api.post("/api/v1/jobs", json=sync("acme"))).json()
    assert (await api.get(job["status_url"])).json()["unique_key"] == "acme"
    plain = (await api.post("/api/v1/jobs", json={"task": ECHO, "payload": {"message": "x"}})).json()
    assert (await api.get(plain["status_url"])).json()["unique_key"] is None


def test_an_enqueue_in_a_rolled_back_transaction_leaves_nothing_and_the_next_makes_a_job(
    clean_ledger: Infra,
) -> None:
    engine = create_engine(clean_ledger.database_url)
    try:
        with Session(engine) as session:
            first = sync_account.enqueue_sync({"account": "acme"}, session=session)
            assert sync_account.enqueue_sync({"account": "acme"}, session=session).id == first.id
            session.rollback()
        assert jobs_of(clean_ledger) == []
        with Session(engine) as session:
            again = sync_account.enqueue_sync({"account": "acme"}, session=session)
            session.commit()
    finally:
        engine.dispose()
    assert (again.duplicate, again.id != first.id) == (False, True)
    assert [job_id for job_id, _, _ in jobs_of(clean_ledger)] == [str(again.id)]


def test_python_enqueues_answer_duplicates_with_the_holder(clean_ledger: Infra) -> None:
    first = sync_account.enqueue_sync({"account": "acme"})
    again = sync_account.enqueue_sync({"account": "acme", "seconds": 3})
    assert (again.id, again.duplicate, again.replayed, again.state) == (first.id, True, False, "queued")
    assert asyncio.run(sync_account.enqueue({"account": "acme"})).id == first.id
    option = [echo.enqueue_sync({"message": "hi"}, unique_key="only-one") for _ in range(2)]
    assert (option[1].id, option[1].duplicate) == (option[0].id, True)
    many = sync_account.enqueue_many_sync([{"account": "acme"}, {"account": "globex"}, {"account": "globex"}])
    assert [job.duplicate for job in many] == [True, False, True]
    assert (many[0].id, many[2].id) == (first.id, many[1].id)
    with pytest.raises(ValueError, match="unique_key"):
        echo.enqueue_sync({"message": "hi"}, unique_key="")


async def test_the_same_idempotency_key_with_another_unique_key_is_another_request(
    api: httpx.AsyncClient, clean_ledger: Infra
) -> None:
    keyed = {**auth(), "Idempotency-Key": "sync-3"}
    body = {"task": ECHO, "payload": {"message": "hi"}, "unique_key": "one"}
    assert (await api.post("/api/v1/jobs", json=body, headers=keyed)).status_code == 202
    assert (await api.post("/api/v1/jobs", json=body, headers=keyed)).status_code == 202
    other = await api.post("/api/v1/jobs", json={**body, "unique_key": "two"}, headers=keyed)
    assert other.status_code == 422
    assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
