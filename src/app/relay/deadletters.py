"""Taking stale copies out of `<queue>.XQ`: the dead runs an operator replayed or discarded.

A replay or discard records the dead run in `stale_dead_letters` in its own transaction.
One pass per queue then removes every recorded copy: the queue's messages are taken without
acknowledgement (consumed, not fetched one round trip at a time), the matching ones are
acknowledged, and closing the channel returns the rest to the queue in their order. A copy
is matched by job id and run, so a job that died again after its replay keeps the copy of
its new death. The relay runs a pass every few seconds when something is recorded, and
`conveyor dlq` runs one right after its own replay or purge.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection

from sqlalchemy import Engine

from app import transport
from app.ledger import jobs as ledger
from app.ledger.jobs import StaleCopy

Progress = transport.Progress
# Copies taken per pass (each a row lock until the pass commits).
PASS_LIMIT = 10_000


def clean(engine: Engine, broker_url: str, progress: Progress | None = None) -> int:
    """One pass: remove the recorded stale copies; how many were found and removed."""
    with engine.begin() as conn:
        stale = ledger.take_stale_copies(conn, PASS_LIMIT)
        if not stale:
            return 0
        removed = remove(broker_url, stale, progress)
        ledger.forget_stale_copies(conn, [copy.id for copy in stale])
    return removed


def remove(broker_url: str, stale: Collection[StaleCopy], progress: Progress | None = None) -> int:
    by_queue: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for copy in stale:
        by_queue[copy.queue].add((str(copy.job_id), copy.run))
    return transport.remove_dead_copies(broker_url, by_queue, progress)
