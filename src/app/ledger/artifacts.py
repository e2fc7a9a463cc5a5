"""The files jobs produce, written in the job's own transaction, whole or in pieces: a file in
pieces is read back a few pieces at a time (`operate.reads.artifact_pieces`), so neither the
writer nor the reader holds a whole file."""

from __future__ import annotations

from uuid import UUID

from app.ledger import queries
from app.ledger.connections import SyncConnection, run


def store_artifact(conn: SyncConnection, job_id: UUID, name: str, content_type: str, content: bytes) -> None:
    """A file kept whole; call it inside `job.transaction()` so it commits with the success."""
    params = {"job_id": job_id, "name": name, "content_type": content_type, "content": content}
    run(conn, queries.STORE_ARTIFACT, params)


class ArtifactWriter:
    """A job's file written piece by piece on the job's effects connection (`job.transaction()`):
    it exists once `close` ran and the job's success committed, and not at all otherwise."""

    def __init__(self, conn: SyncConnection, job_id: UUID, name: str, content_type: str) -> None:
        self.conn = conn
        self.job_id = job_id
        self.name = name
        self.content_type = content_type
        self.pieces = 0
        self.size = 0
        # An earlier run's file (a replayed job that had succeeded once) makes way for this one.
        run(conn, queries.CLEAR_ARTIFACT, {"job_id": job_id})

    def write(self, content: bytes) -> None:
        if not content:
            return
        params = {"job_id": self.job_id, "seq": self.pieces, "content": content}
        run(self.conn, queries.STORE_ARTIFACT_CHUNK, params)
        self.pieces += 1
        self.size += len(content)

    def close(self) -> None:
        params = {
            "job_id": self.job_id,
            "name": self.name,
            "content_type": self.content_type,
            "size": self.size,
        }
        run(self.conn, queries.CLOSE_ARTIFACT, params)
