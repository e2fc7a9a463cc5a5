"""A job's file in pieces, on the ledger's metadata (schema.py is at its size limit).

Written and read one piece at a time: the export streams through them (migration 0006).
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Integer, LargeBinary, Table
from sqlalchemy.dialects.postgresql import UUID

from app.ledger.schema import metadata

job_artifact_chunks = Table(
    "job_artifact_chunks",
    metadata,
    Column("job_id", UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("content", LargeBinary, nullable=False),
)
