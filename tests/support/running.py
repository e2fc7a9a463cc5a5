"""Running a claimed job in the test's own process the way a worker thread does: claimed in one
statement, run by `run_claimed_job` from the job the ledger holds, its success committed with the
task's own transaction, a failure recorded by the worker's own writes."""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

import orjson
import psycopg

from app.errors import PermanentError
from app.execution.actors import run_claimed_job
from app.execution.outcomes import describe
from app.execution.writes import LedgerWrites
from app.jobs.context import JobContext, set_current
from app.ledger import jobs as ledger
from app.ledger.jobs import Doorbell
from tests.support.infra import Infra

WORKER = "test-host:1:worker"


def claim(infra: Infra, job_id: UUID | str, task: str) -> JobContext:
    """Claim the job as a worker's consumer does: it is `running` under this test's lease."""
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn:
        [claimed] = ledger.claim(conn, WORKER, 30.0, [Doorbell(UUID(str(job_id)), task)])
    assert claimed is not None, f"job {job_id} is not claimable"
    return JobContext(claimed.token, claimed.task, claimed.max_attempts, WORKER, claimed.payload_json)


def finish(ctx: JobContext) -> tuple[str, Any]:
    """Run the claimed job to its end: ('succeeded', result) or ('dead', error)."""
    set_current(ctx)
    try:
        run_claimed_job()
    except PermanentError as error:
        return _bury(ctx, error)
    finally:
        set_current(None)
    owned: list[bool] = []
    recorded = threading.Event()

    def written(was_owned: bool) -> None:
        owned.append(was_owned)
        recorded.set()

    writes = _writes()
    writes.succeed(ctx, orjson.dumps(ctx.result).decode(), written)
    # Without the task's own transaction the success joins the worker's next batch, written on
    # the batcher's thread.
    assert recorded.wait(30.0), "the success was written"
    writes.close()
    assert owned == [True], "the success was recorded"
    return "succeeded", ctx.result


def _bury(ctx: JobContext, error: PermanentError) -> tuple[str, str]:
    ctx.discard_effects()
    assert _writes().bury(ctx.token, describe(error)), "the failure was recorded"
    return "dead", describe(error)


def _writes() -> LedgerWrites:
    writes = LedgerWrites()
    writes.worker_id = WORKER
    return writes


def run(infra: Infra, job_id: UUID | str, task: str) -> tuple[str, Any]:
    return finish(claim(infra, job_id, task))
