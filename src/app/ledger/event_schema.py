"""The event log's table, on the ledger's metadata (schema.py is at its size limit).

The migration (0009) is the source of truth; app/ledger/events.py says how the log is read.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Identity, Index, Integer, Table, Text, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.types import UserDefinedType

from app.ledger.schema import metadata

# Woken (with an empty payload, which folds within a transaction) when events commit.
EVENTS_CHANNEL = "conveyor_events"
# The application_name of the relay's publishing connection, which never writes an event (a
# trigger refuses it): `event_horizon()` passes over its transactions (migration 0015 says why).
PUBLISH_APPLICATION_NAME = "conveyor-publish"


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (`xid8`): the event log's commit-order key."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "XID8"


# One row per change of a job's state, written in the transaction that changed it. Followed by
# (xid, id), never by id alone. No foreign key to jobs: a job's events outlive it and are
# pruned by their own age.
job_events = Table(
    "job_events",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("xid", Xid8(), nullable=False, server_default=text("pg_current_xact_id()")),
    Column("at", DateTime(timezone=True), nullable=False, server_default=text("clock_timestamp()")),
    Column("job_id", UUID(as_uuid=True), nullable=False),
    Column("task", Text, nullable=False),
    Column("queue", Text, nullable=False),
    # Copied from the job: an enqueue key's stream shows its own jobs only.
    Column("client_id", Text),
    # Filled by workflows: the `workflow=` filter.
    Column("workflow_id", UUID(as_uuid=True)),
    # The job's new state, and its attempt count after the change.
    Column("state", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Index("ix_job_events_cursor", "xid", "id"),
    Index("ix_job_events_job", "job_id", "xid", "id"),
    Index(
        "ix_job_events_workflow",
        "workflow_id",
        "xid",
        "id",
        postgresql_where=text("workflow_id IS NOT NULL"),
    ),
)
