"""Many jobs at once through the real processes: every job of a batch is published and runs.

The batch goes to the real `conveyor api`; `enqueue_many` runs here, in the test process, as
your code would; the real relay and worker (subprocesses) run what committed.
"""

from __future__ import annotations

import time

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from app.tasks.example import echo
from tests.support.infra import Infra
from tests.support.stack import Stack

ECHO = "app.tasks.example.echo"


def states(infra: Infra) -> dict[str, int]:
    with psycopg.connect(infra.libpq_url) as conn:
        rows = conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
    return {str(state): int(count) for state, count in rows}


def wait_all_succeeded(stack: Stack, infra: Infra, count: int, timeout: float = 120.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    found = states(infra)
    while found.get("succeeded", 0) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        found = states(infra)
    assert found == {"succeeded": count}, f"{found}\n{stack.logs()}"
    return found


def test_a_batch_of_a_thousand_echo_jobs_all_succeed(stack: Stack, infra: Infra) -> None:
    jobs = [{"task": ECHO, "payload": {"message": f"bulk {i}"}} for i in range(1000)]
    with stack.client() as client:
        response = client.post("/api/v1/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 202, response.text
    answered = response.json()["jobs"]
    assert len(answered) == 1000
    wait_all_succeeded(stack, infra, 1000)
    last = stack.job(answered[-1]["id"])
    assert last["result"] == {"message": "bulk 999"}


def test_jobs_enqueued_many_in_a_committed_session_run_and_a_rolled_back_batch_never_does(
    stack: Stack, infra: Infra
) -> None:
    engine = create_engine(infra.database_url)
    try:
        with Session(engine) as session:
            echo.enqueue_many_sync([{"message": f"dropped {i}"} for i in range(100)], session=session)
            session.rollback()
        with Session(engine) as session:
            kept = echo.enqueue_many_sync([{"message": f"kept {i}"} for i in range(100)], session=session)
            session.commit()
    finally:
        engine.dispose()
    wait_all_succeeded(stack, infra, 100)
    assert stack.job(str(kept[0].id))["result"] == {"message": "kept 0"}
