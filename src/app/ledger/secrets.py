"""The conveyor_secrets table: secrets Conveyor generates for itself when the environment gives none.

Get-or-create without a race: every process offers a fresh value and the first one stored wins
(`INSERT … ON CONFLICT DO NOTHING` waits for a concurrent insert to commit or roll back), then
each reads the one that is there. The read is a statement of its own so that, under READ
COMMITTED, it sees a winner that committed while the insert waited.
"""

from __future__ import annotations

from app.ledger import queries
from app.ledger.connections import AsyncConnection, SyncConnection, run, run_async


def get_or_create(conn: SyncConnection, name: str, candidate: str) -> tuple[str, bool]:
    """The stored secret of `name` (storing `candidate` when there is none) and whether it was
    already stored, in the caller's transaction: one stored here exists only once it commits."""
    inserted = run(conn, queries.INSERT_SECRET, {"name": name, "value": candidate}).rowcount
    return str(run(conn, queries.FIND_SECRET, {"name": name}).rows[0][0]), not inserted


async def get_or_create_async(conn: AsyncConnection, name: str, candidate: str) -> tuple[str, bool]:
    """`get_or_create` on an async connection."""
    inserted = (await run_async(conn, queries.INSERT_SECRET, {"name": name, "value": candidate})).rowcount
    return str((await run_async(conn, queries.FIND_SECRET, {"name": name})).rows[0][0]), not inserted
