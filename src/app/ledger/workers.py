"""The workers table: each worker's heartbeat, and its clean stop."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson

from app.ledger import queries
from app.ledger.connections import SyncConnection, run


@dataclass(frozen=True, slots=True)
class Heartbeat:
    id: str
    host: str
    pid: int
    queues: list[str]
    started_at: datetime
    in_flight: int
    processed: int


def beat(conn: SyncConnection, heartbeat: Heartbeat) -> None:
    params = {
        "id": heartbeat.id,
        "host": heartbeat.host,
        "pid": heartbeat.pid,
        "queues": orjson.dumps(heartbeat.queues).decode(),
        "started_at": heartbeat.started_at,
        "in_flight": heartbeat.in_flight,
        "processed": heartbeat.processed,
    }
    run(conn, queries.UPSERT_WORKER, params)


def stop(conn: SyncConnection, worker_id: str) -> None:
    run(conn, queries.STOP_WORKER, {"id": worker_id})
