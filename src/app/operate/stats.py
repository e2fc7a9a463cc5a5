"""What an operator looks at: counts, backlog, age, throughput, workers. Each query uses an index.

Written once for the dashboard (async), the CLI (async) and the scrape-time gauges (sync,
in a probe thread): the statements are shared, and so is what is made of their rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.ledger.schema import JobState
from app.settings import get_settings

# Up to this many jobs per state the dashboard counts exactly (an index-only scan that stops
# at the cap); a state with more shows the planner's estimate, which is what an operator
# needs at that size and costs a catalog lookup instead of a scan of the whole ledger.
EXACT_COUNT_CAP = 10_000

# Each state is counted up to :cap rows; `estimate` is what the planner's statistics say a
# state holds (reltuples times the state's share among the most common values), read only
# for a state that reached the cap.
CAPPED_COUNTS_BY_STATE = text(
    """
    SELECT s.state, c.n,
           CASE WHEN c.n >= :cap THEN (
               SELECT (st.most_common_freqs[array_position(st.most_common_vals::text::text[], s.state)]
                       * greatest(cl.reltuples, 0))::bigint
               FROM pg_stats st, pg_class cl
               WHERE st.schemaname = current_schema() AND st.tablename = 'jobs'
                 AND st.attname = 'state' AND cl.oid = 'jobs'::regclass
           ) END AS estimate
    FROM unnest(CAST(:states AS text[])) AS s(state)
    CROSS JOIN LATERAL (
        SELECT count(*) AS n FROM (SELECT 1 FROM jobs WHERE jobs.state = s.state LIMIT :cap) AS capped
    ) AS c
    """
)

# What the relay owes: due jobs without limits outside paused queues (jobs waiting on a limit or
# a paused queue are held back on purpose: see conveyor_jobs_waiting_on_limit).
OUTBOX_BACKLOG = text(
    """
    SELECT count(*) FROM jobs
    WHERE published_at IS NULL AND state IN ('queued', 'retrying') AND available_at <= now()
      AND concurrency_key IS NULL AND rate_key IS NULL
      AND queue <> ALL (ARRAY(SELECT queue FROM paused_queues))
    """
)

OLDEST_DUE = text(
    """
    SELECT extract(epoch FROM now() - min(available_at)) FROM jobs
    WHERE state IN ('queued', 'retrying') AND available_at <= now()
    """
)

OLDEST_WAITING = text("SELECT extract(epoch FROM now() - min(created_at)) FROM jobs WHERE state = 'queued'")

THROUGHPUT_SINCE = text(
    """
    SELECT date_trunc('minute', finished_at) AS minute, state, count(*) AS jobs FROM jobs
    WHERE finished_at >= :since
    GROUP BY 1, 2 ORDER BY 1
    """
)

WORKERS = text(
    """
    SELECT id, host, pid, queues, started_at, last_seen, in_flight, processed, stopped_at,
           stopped_at IS NULL AND last_seen > now() - make_interval(secs => :window) AS live
    FROM workers
    WHERE stopped_at IS NULL OR stopped_at > now() - interval '1 hour'
    ORDER BY live DESC, last_seen DESC
    LIMIT :limit
    """
)

# Workers and relays each beat into a table of their own; live: a recent beat and no stop.
# (The table names are these two literals, never input.)
LIVE = {
    kind: text(
        f"""
        SELECT count(*) FROM {table}
        WHERE stopped_at IS NULL AND last_seen > now() - make_interval(secs => :window)
          AND (CAST(:host AS text) IS NULL OR host = :host)
        """
    )
    for kind, table in (("worker", "workers"), ("relay", "relays"))
}
LIVE_WORKERS = LIVE["worker"]
LIVE_RELAYS = LIVE["relay"]

OUTBOX_OLDEST = text(
    """
    SELECT extract(epoch FROM now() - min(available_at)) FROM jobs
    WHERE published_at IS NULL AND state IN ('queued', 'retrying') AND available_at <= now()
      AND concurrency_key IS NULL AND rate_key IS NULL
      AND queue <> ALL (ARRAY(SELECT queue FROM paused_queues))
    """
)

DEAD_BY_TASK = text(
    """
    SELECT task, count(*) AS jobs FROM jobs WHERE state = 'dead'
    GROUP BY task ORDER BY count(*) DESC, task LIMIT :limit
    """
)

COUNT_DEAD = text(
    "SELECT count(*) FROM jobs WHERE state = 'dead' AND (CAST(:task AS text) IS NULL OR task = :task)"
)


@dataclass(frozen=True, slots=True)
class StateCount:
    count: int
    exact: bool


@dataclass(frozen=True, slots=True)
class MinuteCount:
    minute: datetime
    state: str
    jobs: int


# -- counts by state ------------------------------------------------------------------------


def _count_params(exact_up_to: int) -> dict[str, Any]:
    return {"states": [state.value for state in JobState], "cap": exact_up_to + 1}


def _state_counts(rows: Sequence[Any], exact_up_to: int) -> dict[str, StateCount]:
    counts: dict[str, StateCount] = {}
    for state, count, estimate in rows:
        if int(count) <= exact_up_to:
            counts[str(state)] = StateCount(int(count), exact=True)
        else:  # never below what was counted, also when the statistics are stale or missing
            counts[str(state)] = StateCount(max(int(estimate or 0), int(count)), exact=False)
    return counts


async def counts_by_state(conn: AsyncConnection, exact_up_to: int = EXACT_COUNT_CAP) -> dict[str, StateCount]:
    """Jobs per state: exact up to `exact_up_to`, the planner's estimate above it."""
    rows = (await conn.execute(CAPPED_COUNTS_BY_STATE, _count_params(exact_up_to))).all()
    return _state_counts(rows, exact_up_to)


def counts_by_state_sync(conn: Connection, exact_up_to: int = EXACT_COUNT_CAP) -> dict[str, StateCount]:
    rows = conn.execute(CAPPED_COUNTS_BY_STATE, _count_params(exact_up_to)).all()
    return _state_counts(rows, exact_up_to)


# -- backlog, age, throughput ---------------------------------------------------------------


async def outbox_backlog(conn: AsyncConnection) -> int:
    return int((await conn.execute(OUTBOX_BACKLOG)).scalar_one())


async def oldest_due_seconds(conn: AsyncConnection) -> float | None:
    """How long the job that has waited longest since it became due (queued or retrying) has waited.

    It counts from `available_at`, so a delayed job does not count before its time and a
    replayed job counts from its replay, not from its creation.
    """
    value = (await conn.execute(OLDEST_DUE)).scalar()
    return None if value is None else max(0.0, float(value))


async def oldest_waiting_seconds(conn: AsyncConnection) -> float | None:
    """How long the oldest queued job has existed (the dashboard's "oldest waiting")."""
    value = (await conn.execute(OLDEST_WAITING)).scalar()
    return None if value is None else float(value)


async def throughput_since(conn: AsyncConnection, since: datetime) -> list[MinuteCount]:
    """Jobs finished per minute and state from `since` on (an index range scan)."""
    rows = (await conn.execute(THROUGHPUT_SINCE, {"since": since})).all()
    return [MinuteCount(r.minute, r.state, int(r.jobs)) for r in rows]


# -- workers --------------------------------------------------------------------------------


def liveness_window_seconds() -> float:
    settings = get_settings()
    return settings.heartbeat_seconds * settings.heartbeat_liveness_intervals


async def workers(conn: AsyncConnection, limit: int = 100) -> list[dict[str, Any]]:
    params = {"window": liveness_window_seconds(), "limit": limit}
    rows = (await conn.execute(WORKERS, params)).mappings().all()
    return [dict(row) for row in rows]


def live_params(host: str | None = None) -> dict[str, Any]:
    return {"window": liveness_window_seconds(), "host": host}


async def live_workers(conn: AsyncConnection) -> int:
    return int((await conn.execute(LIVE_WORKERS, live_params())).scalar_one())


# -- dead jobs ------------------------------------------------------------------------------


async def dead_by_task(conn: AsyncConnection, limit: int = 100) -> dict[str, int]:
    """Dead jobs per task, most first; costs as much as there are dead jobs."""
    rows = (await conn.execute(DEAD_BY_TASK, {"limit": limit})).all()
    return {str(row.task): int(row.jobs) for row in rows}


async def count_dead(conn: AsyncConnection, task: str | None = None) -> int:
    return int((await conn.execute(COUNT_DEAD, {"task": task})).scalar_one())
