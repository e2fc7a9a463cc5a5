"""The statements of time and the dashboard's schedule reads each have an index to use.

Each plan is taken with sequential scans priced out (`enable_seqscan = off`): where an
index can serve the statement the planner takes it, and where none can it still has to
scan the table, which the plan then shows. So a statement that would read the whole ledger
at a million rows fails here at a handful.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.dialects import postgresql

from app.ledger import queries
from app.operate import reads
from app.operate.schedules import RECENT_JOBS
from tests.support.infra import Infra


@pytest.fixture
def planner(clean_ledger: Infra) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(clean_ledger.libpq_url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        yield conn


@pytest.fixture
def core(clean_ledger: Infra) -> Iterator[Connection]:
    engine = create_engine(clean_ledger.database_url)
    with engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        yield conn
    engine.dispose()


def plan_of(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> str:
    return "\n".join(str(row[0]) for row in conn.execute(f"EXPLAIN {sql}", params).fetchall())


def assert_no_table_scan(plan: str) -> None:
    assert "Seq Scan on jobs" not in plan, plan
    assert "Seq Scan on schedules" not in plan, plan


@pytest.mark.parametrize("state", ["succeeded", "dead", "cancelled"])
def test_pruning_a_state_reads_its_oldest_finished_jobs_from_an_index(
    planner: psycopg.Connection[Any], state: str
) -> None:
    params = {"state": state, "retain": 60.0, "limit": 1000, "record_stale": state == "dead"}
    plan = plan_of(planner, queries.PRUNE_JOBS, params)
    assert_no_table_scan(plan)
    assert "ix_jobs_prune" in plan
    assert_no_table_scan(plan_of(planner, queries.COUNT_PRUNABLE, params))


def test_releasing_expired_idempotency_keys_reads_an_index(planner: psycopg.Connection[Any]) -> None:
    plan = plan_of(planner, queries.RELEASE_EXPIRED_IDEMPOTENCY_KEYS, {"ttl": 86_400.0, "limit": 1000})
    assert_no_table_scan(plan)
    assert "ix_jobs_idempotency_created" in plan


def test_finding_due_schedules_and_the_next_tick_reads_an_index(planner: psycopg.Connection[Any]) -> None:
    for sql, params in ((queries.TAKE_DUE_SCHEDULES, {"limit": 100}), (queries.SECONDS_UNTIL_NEXT_TICK, {})):
        plan = plan_of(planner, sql, params)
        assert_no_table_scan(plan)
        assert "ix_schedules_due" in plan


def test_the_jobs_of_a_schedule_newest_first_come_from_an_index(core: Connection) -> None:
    query = reads.page_query(schedule="nightly", limit=50)
    compiled = query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    plan = "\n".join(str(row[0]) for row in core.exec_driver_sql(f"EXPLAIN {compiled}"))
    assert_no_table_scan(plan)
    assert "ix_jobs_schedule_created" in plan
    recent = text(f"EXPLAIN {RECENT_JOBS.text}")
    plan = "\n".join(str(row[0]) for row in core.execute(recent, {"names": ["a", "b"], "per_schedule": 5}))
    assert_no_table_scan(plan)
