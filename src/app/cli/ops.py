"""Operate Conveyor from a shell: health, jobs, enqueue, workers, stats (and `dlq`, in cli/dlq.py).

The commands read and write the ledger directly, through the same services as the API, so
they keep working while the API is down. Every listing takes `--json` for scripts.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer
from rich.table import Table
from rich.text import Text

from app.cli import dlq
from app.cli._common import (
    ago,
    duration,
    fail,
    print_json,
    short,
    stdout,
    task_filter,
    task_queues,
    task_spec,
    usage,
    warn,
    when,
    with_database,
)
from app.db.schema import JobState

if TYPE_CHECKING:
    from sqlalchemy import Row
    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.health import Check

jobs_app = typer.Typer(help="Look at jobs in the ledger.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
STATE_STYLES = {
    "queued": "cyan",
    "running": "blue",
    "retrying": "yellow",
    "succeeded": "green",
    "dead": "red",
    "cancelled": "dim",
}
API_TIMEOUT_SECONDS = 3.0
MAX_IDEMPOTENCY_KEY = 255


# -- health ---------------------------------------------------------------------------------


class Component(StrEnum):
    API = "api"
    WORKER = "worker"
    BROKER = "broker"
    DB = "db"


def health(
    component: Annotated[
        Component | None,
        typer.Option(
            help="Check one part: api (GET /health/live), worker (a live worker on this host), "
            "broker, db. Default: db, broker and any live worker."
        ),
    ] = None,
) -> None:
    """Check health: exit 0 when healthy, 1 with a one-line reason when not (a container healthcheck)."""
    checks = _checks(component)
    failed = [f"{name}: {check.reason}" for name, check in checks.items() if not check.ok]
    if failed:
        fail("unhealthy: " + "; ".join(failed))
    typer.echo("healthy: " + ", ".join(_summary(name, check) for name, check in checks.items()))


def _checks(component: Component | None) -> dict[str, Check]:
    from app import health as probes

    if component is Component.API:
        return {"api": _check_api()}
    if component is Component.WORKER:
        return {"worker": probes.check_workers(host=probes.this_host())}
    if component is Component.DB:
        return {"database": probes.check_database()}
    if component is Component.BROKER:
        return {"broker": probes.check_broker(queues=task_queues())}
    return {
        "database": probes.check_database(),
        "broker": probes.check_broker(queues=task_queues()),
        "worker": probes.check_workers(),
    }


def _check_api() -> Check:
    import httpx

    from app.health import Check, first_line
    from app.settings import get_settings

    url = f"{get_settings().api_base_url.rstrip('/')}/health/live"
    try:
        response = httpx.get(url, timeout=API_TIMEOUT_SECONDS)
    except httpx.HTTPError as error:
        return Check(False, f"{url} unreachable: {first_line(error) or type(error).__name__}")
    if response.status_code != 200:
        return Check(False, f"{url} answered {response.status_code}")
    return Check(True, details={"url": url})


def _summary(name: str, check: Check) -> str:
    if "live" in check.details:
        return f"{name} ({check.details['live']} live)"
    if "queues" in check.details:
        return f"{name} ({len(check.details['queues'])} queues)"
    return name


# -- jobs -----------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    state: Annotated[JobState | None, typer.Option(help="Only jobs in this state")] = None,
    task: Annotated[str | None, typer.Option(help="Only jobs of this task (full or short name)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many jobs")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Continue after a previous page")] = None,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first."""
    from app.services import jobs as service

    task_name = task_filter(task)

    async def page(engine: AsyncEngine) -> tuple[list[Row[Any]], str | None]:
        async with engine.connect() as conn:
            return await service.page(
                conn, state=state.value if state else None, task=task_name, limit=limit, cursor=cursor
            )

    try:
        rows, next_cursor = with_database(page)
    except ValueError:
        usage(f"--cursor {cursor!r} is not a cursor this command printed")
    if as_json:
        print_json({"items": [_job_json(row) for row in rows], "next_cursor": next_cursor})
        return
    if not rows:
        typer.echo("no jobs match", err=True)
        return
    table = Table("ID", "TASK", "STATE", "ATTEMPTS", "PROGRESS", "CREATED", "FINISHED", "LAST ERROR")
    for row in rows:
        table.add_row(
            str(row.id),
            row.task,
            _state(row.state),
            f"{row.attempts}/{row.max_attempts}",
            f"{row.progress}%",
            when(row.created_at),
            when(row.finished_at),
            short(row.last_error),
        )
    stdout().print(table)
    if next_cursor:
        typer.echo(f"more: --cursor {next_cursor}", err=True)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[UUID, typer.Argument(help="The job's id")], as_json: JsonOption = False
) -> None:
    """Show one job: its fields, payload, result and every attempt (exit 1 if there is no such job)."""
    from app.errors import JobNotFound
    from app.services import jobs as service

    async def load(engine: AsyncEngine) -> tuple[Row[Any], list[Row[Any]]]:
        async with engine.connect() as conn:
            return await service.get(conn, job_id), await service.attempts_of(conn, job_id)

    try:
        job, attempts = with_database(load)
    except JobNotFound as error:
        fail(str(error))
    if as_json:
        print_json({**_job_json(job), "attempts": [_attempt_json(a) for a in attempts]})
        return
    console = stdout()
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    for name, shown in (
        ("id", str(job.id)),
        ("task", job.task),
        ("queue", job.queue),
        ("state", _state(job.state)),
        ("run", str(job.run)),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("progress", f"{job.progress}%"),
        ("priority", str(job.priority)),
        ("created", when(job.created_at)),
        ("started", when(job.started_at)),
        ("finished", when(job.finished_at)),
        ("next retry", when(job.available_at) if job.state == JobState.RETRYING else "-"),
        ("worker", job.worker_id or "-"),
        ("last error", job.last_error or "-"),
        ("payload", _compact(job.payload)),
        ("result", _compact(job.result) if job.result is not None else "-"),
    ):
        fields.add_row(name, shown)
    console.print(fields)
    if not attempts:
        console.print("\nno attempts yet")
        return
    history = Table("RUN", "ATTEMPT", "WORKER", "STARTED", "FINISHED", "DURATION", "OUTCOME", "ERROR")
    for a in attempts:
        history.add_row(
            str(a.run),
            str(a.attempt),
            a.worker_id or "-",
            when(a.started_at),
            when(a.finished_at),
            "-" if a.duration_seconds is None else f"{a.duration_seconds:.3f}s",
            a.outcome or "-",
            short(a.error),
        )
    console.print()
    console.print(history)


def _job_json(row: Row[Any]) -> dict[str, Any]:
    from app.api.jobs import job_view

    return job_view(row).model_dump(mode="json")


def _attempt_json(row: Row[Any]) -> dict[str, Any]:
    from app.api.schemas import AttemptView

    return AttemptView.model_validate(row, from_attributes=True).model_dump(mode="json")


def _state(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def _compact(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


# -- enqueue --------------------------------------------------------------------------------


def enqueue(
    task: Annotated[str, typer.Argument(help="The task: its full name or the last part (echo)")],
    payload: Annotated[str, typer.Option("--payload", "-p", help="The payload, a JSON object")] = "{}",
    delay: Annotated[int, typer.Option(min=0, help="Seconds to wait before it may run")] = 0,
    priority: Annotated[int, typer.Option(min=0, max=9, help="0 (default) to 9 (first)")] = 0,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Repeat safely: the same key and request return the first job")
    ] = None,
) -> None:
    """Enqueue a job, validated like the API does; prints its id."""
    import orjson
    import pydantic

    from app.api.schemas import JobRequest
    from app.errors import IdempotencyConflict
    from app.services import jobs as service

    spec = task_spec(task)
    try:
        raw = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        usage(f"--payload is not valid JSON: {error}")
    if not isinstance(raw, dict):
        usage("--payload must be a JSON object")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        usage(f"--idempotency-key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    try:
        request = JobRequest(task=spec.name, payload=raw, delay_seconds=delay, priority=priority)
        validated = spec.payload_model.model_validate(raw).model_dump(mode="json")
    except pydantic.ValidationError as error:
        usage("invalid payload: " + "; ".join(_field_error(e) for e in error.errors()))
    # The API's fingerprint: one key works across the API and the CLI.
    fingerprint = service.request_fingerprint("/api/v1/jobs", request.model_dump(mode="json"))

    async def accept(engine: AsyncEngine) -> service.Accepted:
        async with engine.begin() as conn:
            return await service.accept(
                conn,
                task=spec.name,
                queue=spec.queue,
                payload=validated,
                max_attempts=spec.retry.resolved_max_attempts(),
                delay_seconds=delay,
                priority=priority,
                idempotency_key=idempotency_key,
                fingerprint=fingerprint if idempotency_key else None,
            )

    try:
        accepted = with_database(accept)
    except IdempotencyConflict as error:
        fail(str(error))
    again = " (the key was used before: the first job)" if accepted.duplicate else ""
    typer.echo(f"{accepted.task} {accepted.state}{again}", err=True)
    typer.echo(str(accepted.id))


def _field_error(error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "payload"
    return f"{where}: {error.get('msg', '')}"


# -- workers and stats ----------------------------------------------------------------------


def workers(as_json: JsonOption = False) -> None:
    """List workers seen in the last hour, live ones first."""
    from app.services import stats

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
        states.add_row(_state(state), str(count))
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
    from app.services import stats as service

    async with engine.connect() as conn:
        counts = await service.counts_by_state(conn)
        backlog = await service.outbox_backlog(conn)
        oldest = await service.oldest_due_seconds(conn)
        live = await service.live_workers(conn)
        minutes = await service.throughput(conn, minutes=60)
    last_hour = {"succeeded": 0, "dead": 0}
    for minute in minutes:
        if minute.state in last_hour:
            last_hour[minute.state] += minute.jobs
    return {
        "jobs": counts,
        "outbox_backlog": backlog,
        "oldest_due_seconds": oldest,
        "live_workers": live,
        "last_hour": last_hour,
    }


def _queue_depths() -> dict[str, dict[str, int | None]] | None:
    from dramatiq.common import xq_name

    from app.health import first_line, queue_probe
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


def register(cli: typer.Typer) -> None:
    cli.command()(health)
    cli.add_typer(jobs_app, name="jobs")
    cli.add_typer(dlq.app, name="dlq")
    cli.command()(enqueue)
    cli.command()(workers)
    cli.command()(stats)
