"""The relays table: each relay's heartbeat, and its clean stop."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app.ledger import queries
from app.ledger.connections import SyncConnection, run


@dataclass(frozen=True, slots=True)
class Heartbeat:
    id: str
    host: str
    pid: int
    started_at: datetime
    published: int


def beat(conn: SyncConnection, heartbeat: Heartbeat) -> None:
    params = {
        "id": heartbeat.id,
        "host": heartbeat.host,
        "pid": heartbeat.pid,
        "started_at": heartbeat.started_at,
        "published": heartbeat.published,
    }
    run(conn, queries.UPSERT_RELAY, params)


def stop(conn: SyncConnection, relay_id: str) -> None:
    run(conn, queries.STOP_RELAY, {"id": relay_id})
