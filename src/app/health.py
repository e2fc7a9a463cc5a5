"""Health checks shared by `/health/ready` and `conveyor health`."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from sqlalchemy import text

from app.db.engine import sync_engine
from app.settings import Settings, get_settings

CONNECT_TIMEOUT_SECONDS = 3.0


@dataclass
class Check:
    ok: bool
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": self.ok, **self.details}
        if self.reason:
            body["reason"] = self.reason
        return body


def check_database(settings: Settings | None = None) -> Check:
    try:
        with sync_engine().connect() as conn:
            conn.execute(text("SET LOCAL statement_timeout = 3000"))
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return Check(True, details={"migration": version})
    except Exception as error:
        return Check(False, f"database unreachable or not migrated: {_first_line(error)}")


def check_broker(settings: Settings | None = None, queues: list[str] | None = None) -> Check:
    settings = settings or get_settings()
    if settings.broker_url.startswith("stub"):
        return Check(True, details={"broker": "stub"})
    params = pika.URLParameters(settings.broker_url)
    params.connection_attempts = 1
    params.socket_timeout = CONNECT_TIMEOUT_SECONDS
    params.blocked_connection_timeout = CONNECT_TIMEOUT_SECONDS
    try:
        connection = pika.BlockingConnection(params)
    except Exception as error:
        return Check(False, f"broker unreachable: {_first_line(error) or type(error).__name__}")
    missing: list[str] = []
    depths: dict[str, int] = {}
    try:
        for queue in queues or []:
            channel = connection.channel()
            try:
                depths[queue] = channel.queue_declare(queue, passive=True).method.message_count
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                missing.append(queue)
    finally:
        connection.close()
    if missing:
        return Check(False, f"queues not declared yet: {', '.join(missing)}", {"queues": depths})
    return Check(True, details={"queues": depths})


def check_workers(settings: Settings | None = None, host: str | None = None) -> Check:
    settings = settings or get_settings()
    window = settings.heartbeat_seconds * settings.heartbeat_liveness_intervals
    query = """
        SELECT count(*) FROM workers
        WHERE stopped_at IS NULL AND last_seen > now() - make_interval(secs => :window)
          AND (CAST(:host AS text) IS NULL OR host = :host)
    """
    try:
        with sync_engine().connect() as conn:
            live = int(conn.execute(text(query), {"window": window, "host": host}).scalar_one())
    except Exception as error:
        return Check(False, f"cannot read heartbeats: {_first_line(error)}")
    where = f" on host {host}" if host else ""
    if live == 0:
        return Check(False, f"no worker{where} sent a heartbeat in the last {window:g}s", {"live": 0})
    return Check(True, details={"live": live})


def this_host() -> str:
    return socket.gethostname()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]
