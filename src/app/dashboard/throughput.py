"""Jobs finished per minute over the last hour, without reading the whole hour on every refresh.

A minute that has ended does not change any more, so its counts are kept in memory and
each refresh asks the ledger only for the minutes still open. A busy hour (100,000 jobs
finished) costs one index range over the current minute instead of over all of them.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection

from app.operate import stats
from app.operate.stats import MinuteCount

WINDOW_MINUTES = 60
# A job's finished_at is its transaction's start time, so a row may commit a moment after
# its minute ended; a minute counts as closed only this long after its end.
SETTLE = timedelta(seconds=10)


class MinuteCounts:
    """Closed minutes of one ledger, cached; one instance per application."""

    def __init__(self) -> None:
        self._closed: dict[datetime, dict[str, int]] = defaultdict(dict)
        self._closed_before: datetime | None = None

    async def last_hour(self, conn: AsyncConnection, now: datetime) -> list[MinuteCount]:
        """Per minute and state, oldest first; `now` is the database's clock."""
        start = _minute(now) - timedelta(minutes=WINDOW_MINUTES - 1)
        since = start if self._closed_before is None else max(self._closed_before, start)
        fresh = await stats.throughput_since(conn, since)
        closing = _minute(now - SETTLE)
        for minute in [m for m in self._closed if m < start]:
            del self._closed[minute]
        open_rows = []
        for row in fresh:
            if row.minute < closing:
                self._closed[row.minute][row.state] = row.jobs
            else:
                open_rows.append(row)
        self._closed_before = max(closing, since)
        closed_rows = [
            MinuteCount(minute, state, count)
            for minute, counts in sorted(self._closed.items())
            if minute >= start
            for state, count in counts.items()
        ]
        return closed_rows + open_rows

    def forget(self) -> None:
        """Drop what is kept, e.g. after a bulk discard deleted finished jobs."""
        self._closed.clear()
        self._closed_before = None


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def minute_counts(app: FastAPI) -> MinuteCounts:
    """The cache of this application (tests build many applications against one ledger)."""
    counts: MinuteCounts | None = getattr(app.state, "dashboard_minute_counts", None)
    if counts is None:
        counts = app.state.dashboard_minute_counts = MinuteCounts()
    return counts
