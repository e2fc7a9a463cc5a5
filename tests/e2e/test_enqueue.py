"""Enqueue from your own code, in your own transaction: a job exists if and only if it commits.

The test process is "your code": it enqueues with the task objects over SQLAlchemy sessions on
the run's database, and the real relay and worker (subprocesses) run what committed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from app.tasks.example import send_email
from tests.support.infra import Infra
from tests.support.smtp import SmtpServer
from tests.support.stack import Stack

PARENT = "app.tasks.diagnostics.parent"


def email(to: str) -> dict[str, str]:
    return {"to": to, "subject": "Welcome", "body": "Hello!"}


def status(stack: Stack, job_id: object) -> int:
    with stack.client() as client:
        return client.get(f"/api/v1/jobs/{job_id}").status_code


def never_arrives(smtp_server: SmtpServer, address: str, seconds: float = 2.0) -> bool:
    time.sleep(seconds)  # a rolled-back job has nothing to publish; give a wrong one time to show
    return smtp_server.handler.to(address) == []


def test_a_job_enqueued_in_an_async_session_runs_once_if_it_commits_and_never_if_it_rolls_back(
    stack: Stack, infra: Infra, smtp_server: SmtpServer
) -> None:
    async def enqueue_both() -> tuple[object, object]:
        engine = create_async_engine(infra.database_url)
        try:
            async with AsyncSession(engine) as session:
                kept = await send_email.enqueue(email("kept.async@example.com"), session=session)
                await session.commit()
            async with AsyncSession(engine) as session:
                dropped = await send_email.enqueue(email("dropped.async@example.com"), session=session)
                await session.rollback()
        finally:
            await engine.dispose()
        return kept.id, dropped.id

    kept, dropped = asyncio.run(enqueue_both())
    assert stack.wait_for([str(kept)])[str(kept)]["state"] == "succeeded"
    assert len(smtp_server.handler.to("kept.async@example.com")) == 1
    assert status(stack, dropped) == 404
    assert never_arrives(smtp_server, "dropped.async@example.com")


def test_a_job_enqueued_in_a_sync_session_runs_once_if_it_commits_and_never_if_it_rolls_back(
    stack: Stack, infra: Infra, smtp_server: SmtpServer
) -> None:
    engine = create_engine(infra.database_url)
    try:
        with Session(engine) as session:
            kept = send_email.enqueue_sync(email("kept.sync@example.com"), session=session)
            session.commit()
        with Session(engine) as session:
            dropped = send_email.enqueue_sync(email("dropped.sync@example.com"), session=session)
            session.rollback()
        with engine.connect() as conn:  # a Connection, not a Session, works the same
            on_connection = send_email.enqueue_sync(email("kept.conn@example.com"), session=conn)
            conn.commit()
    finally:
        engine.dispose()
    jobs = stack.wait_for([str(kept.id), str(on_connection.id)])
    assert {job["state"] for job in jobs.values()} == {"succeeded"}
    assert len(smtp_server.handler.to("kept.sync@example.com")) == 1
    assert len(smtp_server.handler.to("kept.conn@example.com")) == 1
    assert status(stack, dropped.id) == 404
    assert never_arrives(smtp_server, "dropped.sync@example.com")


def test_a_job_committed_while_the_relay_is_dead_runs_when_a_relay_sweeps(
    stack: Stack, infra: Infra, smtp_server: SmtpServer
) -> None:
    stack.processes["relay"].kill()  # the commit's NOTIFY goes to nobody
    engine = create_engine(infra.database_url)
    try:
        with Session(engine) as session:
            job = send_email.enqueue_sync(email("after.the.relay@example.com"), session=session)
            session.commit()
    finally:
        engine.dispose()
    time.sleep(1)
    assert stack.job(str(job.id))["state"] == "queued", "nothing published it yet"
    stack.start_relay("relay-again")
    assert stack.wait_for([str(job.id)])[str(job.id)]["state"] == "succeeded"
    assert len(smtp_server.handler.to("after.the.relay@example.com")) == 1


@pytest.fixture
def diagnostics_stack(clean_ledger: Infra, tmp_path: Path) -> Iterator[Stack]:
    running = Stack(
        workdir=tmp_path, env={**os.environ, "DIAGNOSTIC_TASKS": "true"}, diagnostics_over_http=True
    )
    try:
        running.start_all()
        yield running
    finally:
        running.stop()


def children_of(stack: Stack, parent: str) -> list[dict[str, object]]:
    with stack.client() as client:
        items = client.get("/api/v1/jobs", params={"limit": 200}).json()["items"]
    return [job for job in items if job["parent_id"] == parent]


def test_a_parent_that_succeeds_has_its_children_run_and_a_failed_attempt_leaves_none(
    diagnostics_stack: Stack,
) -> None:
    stack = diagnostics_stack
    fine = stack.post_job(PARENT, {"children": 2})
    flaky = stack.post_job(PARENT, {"children": 1, "fail_on_attempt": 1})
    parents = stack.wait_for([fine, flaky])
    assert parents[fine]["state"] == parents[flaky]["state"] == "succeeded"
    assert parents[flaky]["attempts"] == 2, "its first attempt failed after making a child"

    made = children_of(stack, fine)
    assert len(made) == 2
    stack.wait_for([str(child["id"]) for child in made])
    from_flaky = children_of(stack, flaky)
    assert [child["payload"] for child in from_flaky] == [{"message": "child 0 of attempt 2"}], (
        "the failed attempt's child rolled back with it"
    )
    assert {str(child["id"]) for child in made} == set(parents[fine]["result"]["children"])

    with stack.client() as client:
        parent_page = client.get(f"/dashboard/jobs/{fine}").text
        child_page = client.get(f"/dashboard/jobs/{made[0]['id']}").text
    assert all(f'data-child="{child["id"]}"' in parent_page for child in made)
    assert f'href="/dashboard/jobs/{fine}"' in child_page
    assert "data-parent" in child_page
