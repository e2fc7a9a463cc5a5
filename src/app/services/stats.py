"""What an operator looks at: counts, backlog, age, throughput, workers. Each query uses an index."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.schema import JobState
from app.settings import get_settings

COUNTS_BY_STATE = text("SELECT state, count(*) FROM jobs GROUP BY state")

COUNTS_BY_TASK_AND_STATE = text("SELECT task, state, count(*) FROM jobs GROUP BY task, state")

OUTBOX_BACKLOG = text(
    """
    SELECT count(*) FROM jobs
    WHERE published_at IS NULL AND state IN ('queued', 'retrying') AND available_at <= now()
    """
)

OLDEST_WAITING = text(
    """
    SELECT extract(epoch FROM now() - min(created_at)) FROM jobs WHERE state = 'queued'
    """
)

THROUGHPUT = text(
    """
    SELECT date_trunc('minute', finished_at) AS minute, state, count(*) AS jobs FROM jobs
    WHERE finished_at > now() - make_interval(mins => :minutes)
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


@dataclass(frozen=True, slots=True)
class MinuteCount:
    minute: datetime
    state: str
    jobs: int


async def counts_by_state(conn: AsyncConnection) -> dict[str, int]:
    counts = {state.value: 0 for state in JobState}
    for state, count in (await conn.execute(COUNTS_BY_STATE)).all():
        counts[str(state)] = int(count)
    return counts


async def counts_by_task_and_state(conn: AsyncConnection) -> dict[tuple[str, str], int]:
    rows = (await conn.execute(COUNTS_BY_TASK_AND_STATE)).all()
    return {(str(task), str(state)): int(count) for task, state, count in rows}


async def outbox_backlog(conn: AsyncConnection) -> int:
    return int((await conn.execute(OUTBOX_BACKLOG)).scalar_one())


async def oldest_waiting_seconds(conn: AsyncConnection) -> float | None:
    value = (await conn.execute(OLDEST_WAITING)).scalar()
    return None if value is None else float(value)


async def throughput(conn: AsyncConnection, minutes: int = 60) -> list[MinuteCount]:
    rows = (await conn.execute(THROUGHPUT, {"minutes": minutes})).all()
    return [MinuteCount(r.minute, r.state, int(r.jobs)) for r in rows]


async def workers(conn: AsyncConnection, limit: int = 100) -> list[dict[str, Any]]:
    settings = get_settings()
    window = settings.heartbeat_seconds * settings.heartbeat_liveness_intervals
    rows = (await conn.execute(WORKERS, {"window": window, "limit": limit})).mappings().all()
    return [dict(row) for row in rows]


# --- bounded counts for the dashboard: a refresh costs the same with any ledger size ---

# Up to this many jobs per state are counted exactly (an index-only scan that stops at the
# cap); a state with more shows the planner's estimate, which is what an operator needs at
# that size and costs a catalog lookup instead of a scan of the whole ledger.
EXACT_COUNT_CAP = 10_000

CAPPED_COUNTS_BY_STATE = text(
    """
    SELECT s.state, c.n FROM unnest(CAST(:states AS text[])) AS s(state)
    CROSS JOIN LATERAL (
        SELECT count(*) AS n FROM (SELECT 1 FROM jobs WHERE jobs.state = s.state LIMIT :cap) AS capped
    ) AS c
    """
)

DEAD_BY_TASK = text(
    """
    SELECT task, count(*) AS jobs FROM jobs WHERE state = 'dead'
    GROUP BY task ORDER BY count(*) DESC, task LIMIT :limit
    """
)


@dataclass(frozen=True, slots=True)
class StateCount:
    count: int
    exact: bool


async def counts_by_state_bounded(
    conn: AsyncConnection, exact_up_to: int = EXACT_COUNT_CAP
) -> dict[str, StateCount]:
    """Jobs per state: exact up to `exact_up_to`, the planner's estimate above it."""
    states = [state.value for state in JobState]
    rows = (await conn.execute(CAPPED_COUNTS_BY_STATE, {"states": states, "cap": exact_up_to + 1})).all()
    counts: dict[str, StateCount] = {}
    for state, count in rows:
        if int(count) <= exact_up_to:
            counts[str(state)] = StateCount(int(count), exact=True)
        else:
            estimate = await _estimated_rows(conn, str(state))
            counts[str(state)] = StateCount(max(estimate, exact_up_to + 1), exact=False)
    return counts


async def _estimated_rows(conn: AsyncConnection, state: str) -> int:
    # EXPLAIN takes no bind parameters; the state is one of JobState's literals, never input.
    assert state in {s.value for s in JobState}
    plan = await conn.execute(text(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM jobs WHERE state = '{state}'"))
    return int(plan.scalar_one()[0]["Plan"]["Plan Rows"])


async def dead_by_task(conn: AsyncConnection, limit: int = 100) -> dict[str, int]:
    """Dead jobs per task, most first; costs as much as there are dead jobs."""
    rows = (await conn.execute(DEAD_BY_TASK, {"limit": limit})).all()
    return {str(row.task): int(row.jobs) for row in rows}


THROUGHPUT_SINCE = text(
    """
    SELECT date_trunc('minute', finished_at) AS minute, state, count(*) AS jobs FROM jobs
    WHERE finished_at >= :since
    GROUP BY 1, 2 ORDER BY 1
    """
)


async def throughput_since(conn: AsyncConnection, since: datetime) -> list[MinuteCount]:
    """Jobs finished per minute and state from `since` on (an index range scan)."""
    rows = (await conn.execute(THROUGHPUT_SINCE, {"since": since})).all()
    return [MinuteCount(r.minute, r.state, int(r.jobs)) for r in rows]


# -- operator queries of the metrics and the CLI (each is bounded by an index or a small set) ---

OLDEST_DUE = text(
    """
    SELECT extract(epoch FROM now() - min(available_at)) FROM jobs
    WHERE state IN ('queued', 'retrying') AND available_at <= now()
    """
)

LIVE_WORKERS = text(
    """
    SELECT count(*) FROM workers
    WHERE stopped_at IS NULL AND last_seen > now() - make_interval(secs => :window)
    """
)

COUNT_DEAD = text(
    "SELECT count(*) FROM jobs WHERE state = 'dead' AND (CAST(:task AS text) IS NULL OR task = :task)"
)

DEAD_LETTERS = text(
    """
    SELECT id, queue, created_at FROM jobs
    WHERE state = 'dead' AND (CAST(:task AS text) IS NULL OR task = :task)
      AND (CAST(:after_created AS timestamptz) IS NULL
           OR (created_at, id) > (CAST(:after_created AS timestamptz), CAST(:after_id AS uuid)))
    ORDER BY created_at, id LIMIT :limit
    """
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: UUID
    queue: str
    created_at: datetime


async def oldest_due_seconds(conn: AsyncConnection) -> float | None:
    """How long the job that has waited longest since it became due (queued or retrying) has waited.

    Unlike `oldest_waiting_seconds` it counts from `available_at`, so a delayed job does not
    count before its time and a replayed job counts from its replay, not from its creation.
    """
    value = (await conn.execute(OLDEST_DUE)).scalar()
    return None if value is None else max(0.0, float(value))


def liveness_window_seconds() -> float:
    settings = get_settings()
    return settings.heartbeat_seconds * settings.heartbeat_liveness_intervals


async def live_workers(conn: AsyncConnection) -> int:
    return int((await conn.execute(LIVE_WORKERS, {"window": liveness_window_seconds()})).scalar_one())


async def count_dead(conn: AsyncConnection, task: str | None = None) -> int:
    return int((await conn.execute(COUNT_DEAD, {"task": task})).scalar_one())


async def dead_letters(
    conn: AsyncConnection,
    *,
    task: str | None = None,
    after: DeadLetter | None = None,
    limit: int = 500,
) -> list[DeadLetter]:
    """Dead jobs oldest first, keyset-paged: a bulk operation walks them once, in chunks."""
    params = {
        "task": task,
        "after_created": after.created_at if after else None,
        "after_id": after.id if after else None,
        "limit": limit,
    }
    rows = (await conn.execute(DEAD_LETTERS, params)).all()
    return [DeadLetter(row.id, row.queue, row.created_at) for row in rows]
