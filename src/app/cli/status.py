"""`conveyor workers` and `conveyor stats`: who is working, and what the ledger and the broker hold."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from app.cli._common import ago, duration, print_json, stdout, task_queues, warn, when, with_database
from app.cli.jobs import state_text

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
# Counted exactly up to this many jobs per state, estimated above (as /metrics does).
EXACT_COUNT_CAP = 100_000


def workers(as_json: JsonOption = False) -> None:
    """List workers seen in the last hour, live ones first."""
    from app.operate import stats

    async def load(engine: AsyncEngine) -> list[dict[str, Any]]:
        async with engine.connect() as conn:
            return await stats.workers(conn)

    rows = with_database(load)
    if as_json:
        print_json([{**row, "status": _worker_status(row)} for row in rows])
        return
    if not rows:
        typer.echo("no worker seen in the last hour", err=True)
        return
    table = Table("ID", "HOST", "PID", "QUEUES", "STARTED", "LAST SEEN", "IN FLIGHT", "PROCESSED", "STATUS")
    for row in rows:
        status = _worker_status(row)
        table.add_row(
            row["id"],
            row["host"],
            str(row["pid"]),
            ",".join(row["queues"] or []),
            when(row["started_at"]),
            ago(row["last_seen"]),
            str(row["in_flight"]),
            str(row["processed"]),
            Text(status, style={"live": "green", "stopped": "dim"}.get(status, "red")),
        )
    stdout().print(table)


def _worker_status(row: dict[str, Any]) -> str:
    if row["stopped_at"] is not None:
        return "stopped"
    return "live" if row["live"] else "silent"


def stats(as_json: JsonOption = False) -> None:
    """Counts by state, outbox backlog, oldest waiting job, throughput, workers and queue depths."""
    summary = with_database(_gather_stats)
    summary["queues"] = _queue_depths()
    if as_json:
        print_json(summary)
        return
    console = stdout()
    states = Table("STATE", "JOBS", title="jobs")
    for state, count in summary["jobs"].items():
        states.add_row(state_text(state), str(count))
    console.print(states)
    oldest = summary["oldest_due_seconds"]
    lines = [
        f"outbox backlog        {summary['outbox_backlog']}",
        f"oldest waiting job    {'-' if oldest is None else duration(oldest)}",
        f"live workers          {summary['live_workers']}",
        f"last hour             {summary['last_hour']['succeeded']} succeeded, "
        f"{summary['last_hour']['dead']} dead",
    ]
    console.print("\n".join(lines))
    queues: dict[str, dict[str, int | None]] | None = summary["queues"]
    if queues is None:
        return
    depths = Table("QUEUE", "READY", "DEAD LETTERS", title="broker")
    for queue, depth in queues.items():
        depths.add_row(queue, _count(depth["ready"]), _count(depth["dead"]))
    console.print(depths)


async def _gather_stats(engine: AsyncEngine) -> dict[str, Any]:
    from app.operate import reads
    from app.operate import stats as service

    async with engine.connect() as conn:
        counts = await service.counts_by_state(conn, EXACT_COUNT_CAP)
        backlog = await service.outbox_backlog(conn)
        oldest = await service.oldest_due_seconds(conn)
        live = await service.live_workers(conn)
        hour_ago = await reads.now(conn) - timedelta(hours=1)
        minutes = await service.throughput_since(conn, hour_ago)
    last_hour = {"succeeded": 0, "dead": 0}
    for minute in minutes:
        if minute.state in last_hour:
            last_hour[minute.state] += minute.jobs
    return {
        "jobs": {state: count.count for state, count in counts.items()},
        "outbox_backlog": backlog,
        "oldest_due_seconds": oldest,
        "live_workers": live,
        "last_hour": last_hour,
    }


def _queue_depths() -> dict[str, dict[str, int | None]] | None:
    from dramatiq.common import xq_name

    from app.logs import first_line
    from app.operate.health import queue_probe
    from app.settings import get_settings

    settings = get_settings()
    if settings.broker_url.startswith("stub"):
        return None
    queues = task_queues()
    try:
        depths = queue_probe(settings.broker_url, queues).get()
    except Exception as error:
        warn(f"broker unreachable, queue depths left out: {first_line(error) or type(error).__name__}")
        return None
    return {queue: {"ready": depths.get(queue), "dead": depths.get(xq_name(queue))} for queue in queues}


def _count(value: int | None) -> str:
    return "not declared" if value is None else str(value)
