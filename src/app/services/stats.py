"""What an operator looks at: counts, backlog, age, throughput, workers. Each query uses an index."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
