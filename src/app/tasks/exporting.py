"""The job history as CSV, written in pieces: what `export_jobs` does, kept to what its client reads.

Rows are read a page at a time (keyset paging on created_at, id) and each page goes to the
ledger as one piece of the job's file, in the job's own transaction: memory stays flat
whatever the ledger holds, and the file exists if and only if the job succeeds.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, and_, func, select, true, tuple_

from app.errors import PermanentError
from app.jobs.context import JobContext
from app.ledger import keys
from app.ledger.artifacts import ArtifactWriter
from app.ledger.engines import sync_engine
from app.ledger.schema import jobs

COLUMNS = (
    "id",
    "task",
    "state",
    "attempts",
    "max_attempts",
    "created_at",
    "started_at",
    "finished_at",
    "last_error",
)
# The scope that reads every job (app.access.keys.Scope.READ; tasks do not import the faces' access
# rules, the ledger holds the key's scopes as text).
READS_EVERYTHING = "read"


def readable_client(job: JobContext) -> str | None:
    """Whose jobs this export may hold: None for every job (an operator's export, or a key with
    `read`), else the one client whose key enqueued it. The key's scopes are looked up now, not
    when it enqueued: a key revoked meanwhile exports nothing (PermanentError)."""
    client = job.client_id()
    if client is None:
        return None
    with sync_engine().connect() as conn:
        scopes = keys.live_scopes(conn, client)
    if scopes is None:
        raise PermanentError("the key that asked for this export is revoked or unknown: nothing was exported")
    return None if READS_EVERYTHING in scopes else client


def conditions(state: str | None, task: str | None, client: str | None) -> ColumnElement[bool]:
    filters: list[ColumnElement[bool]] = []
    if state is not None:
        filters.append(jobs.c.state == state)
    if task is not None:
        filters.append(jobs.c.task == task)
    if client is not None:
        filters.append(jobs.c.client_id == client)
    return and_(true(), *filters)


def pages(conn: Connection, where: ColumnElement[bool], size: int) -> Iterator[Sequence[Row[Any]]]:
    """The rows, oldest first, `size` at a time."""
    after: tuple[Any, Any] | None = None
    while True:
        query = select(*(jobs.c[name] for name in COLUMNS)).where(where)
        if after is not None:
            query = query.where(tuple_(jobs.c.created_at, jobs.c.id) > tuple_(*after))
        rows = conn.execute(query.order_by(jobs.c.created_at, jobs.c.id).limit(size)).all()
        if not rows:
            return
        yield rows
        after = (rows[-1].created_at, rows[-1].id)


def csv_piece(rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode()


def export(job: JobContext, state: str | None, task: str | None, page_size: int) -> dict[str, Any]:
    """Write the CSV of the jobs this job's client may read as the job's file; its summary."""
    where = conditions(state, task, readable_client(job))
    with job.transaction() as effects:
        total = effects.execute(select(func.count()).select_from(jobs).where(where)).scalar_one()
        writer = ArtifactWriter(effects, job.token.job_id, f"jobs-{job.job_id}.csv", "text/csv")
        writer.write(csv_piece([COLUMNS]))
        written = 0
        for rows in pages(effects, where, page_size):
            writer.write(csv_piece(rows))
            written += len(rows)
            job.progress(100 * written / max(total, 1) * 0.99)
        writer.close()
    return {
        "rows": written,
        "bytes": writer.size,
        "artifact_url": f"/api/v1/jobs/{job.job_id}/artifact",
    }
