"""What keeps the ledger bounded: finished jobs past their retention, expired idempotency keys,
expired dashboard sessions, job events past EVENT_RETENTION_SECONDS, and the rows of workers and
relays long gone. Each call is one
statement of at most `limit` rows, taken SKIP LOCKED, so several relays may prune at once and
none holds locks for long.
"""

from __future__ import annotations

from app.ledger import queries
from app.ledger.connections import SyncConnection, run
from app.ledger.schema import TERMINAL_STATES


def prune_jobs(
    conn: SyncConnection, state: str, retain_seconds: float, limit: int, *, record_stale: bool = False
) -> int:
    """Delete up to `limit` jobs of a finished `state` older than `retain_seconds` (by finished_at),
    with their attempts and artifacts; how many went. `record_stale`: their dead-letter copies,
    if any are still in `<queue>.XQ`, are recorded for removal."""
    if state not in TERMINAL_STATES:
        raise ValueError(f"only finished jobs are pruned, not {state!r} ones")
    params = {"state": state, "retain": retain_seconds, "limit": limit, "record_stale": record_stale}
    return int(run(conn, queries.PRUNE_JOBS, params).rows[0][0])


def count_prunable(conn: SyncConnection, state: str, retain_seconds: float) -> int:
    return int(run(conn, queries.COUNT_PRUNABLE, {"state": state, "retain": retain_seconds}).rows[0][0])


def release_expired_keys(conn: SyncConnection, ttl_seconds: float, limit: int) -> int:
    """Free up to `limit` idempotency keys older than `ttl_seconds`; how many."""
    params = {"ttl": ttl_seconds, "limit": limit}
    return run(conn, queries.RELEASE_EXPIRED_IDEMPOTENCY_KEYS, params).rowcount


def prune_workers(conn: SyncConnection, retain_seconds: float) -> int:
    return run(conn, queries.PRUNE_WORKERS, {"retain": retain_seconds}).rowcount


def prune_relays(conn: SyncConnection, retain_seconds: float) -> int:
    return run(conn, queries.PRUNE_RELAYS, {"retain": retain_seconds}).rowcount


def prune_sessions(conn: SyncConnection, limit: int) -> int:
    """Delete up to `limit` expired dashboard sessions; how many went."""
    return run(conn, queries.PRUNE_SESSIONS, {"limit": limit}).rowcount


def prune_events(conn: SyncConnection, retain_seconds: float, limit: int) -> int:
    """Delete up to `limit` of the oldest events (in the log's order) older than `retain_seconds`."""
    return run(conn, queries.PRUNE_EVENTS, {"retain": retain_seconds, "limit": limit}).rowcount


def count_prunable_events(conn: SyncConnection, retain_seconds: float) -> int:
    return int(run(conn, queries.COUNT_PRUNABLE_EVENTS, {"retain": retain_seconds}).rows[0][0])
