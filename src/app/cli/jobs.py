"""`conveyor jobs list|show|cancel`: jobs in the ledger, read and cancelled directly, so they work
while the API is down."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer
from rich.table import Table
from rich.text import Text

from app.cli._common import fail, fields, print_json, short, stdout, task_filter, usage, when, with_database
from app.ledger.schema import JobState

if TYPE_CHECKING:
    from sqlalchemy import Row
    from sqlalchemy.ext.asyncio import AsyncEngine

app = typer.Typer(help="Look at jobs in the ledger, and cancel one.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
STATE_STYLES = {
    "queued": "cyan",
    "running": "blue",
    "retrying": "yellow",
    "succeeded": "green",
    "dead": "red",
    "cancelled": "dim",
}


@app.command("list")
def jobs_list(
    state: Annotated[JobState | None, typer.Option(help="Only jobs in this state")] = None,
    task: Annotated[str | None, typer.Option(help="Only jobs of this task (full or short name)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many jobs")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Continue after a previous page")] = None,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first."""
    from app.operate import reads as service

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
        print_json({"items": [job_json(row) for row in rows], "next_cursor": next_cursor})
        return
    if not rows:
        typer.echo("no jobs match", err=True)
        return
    table = Table("ID", "TASK", "STATE", "ATTEMPTS", "PROGRESS", "CREATED", "FINISHED", "LAST ERROR")
    for row in rows:
        table.add_row(
            str(row.id),
            row.task,
            state_text(row.state),
            f"{row.attempts}/{row.max_attempts}",
            f"{row.progress}%",
            when(row.created_at),
            when(row.finished_at),
            short(row.last_error),
        )
    stdout().print(table)
    if next_cursor:
        typer.echo(f"more: --cursor {next_cursor}", err=True)


@app.command("show")
def jobs_show(
    job_id: Annotated[UUID, typer.Argument(help="The job's id")], as_json: JsonOption = False
) -> None:
    """Show one job: its fields, payload, result and every attempt (exit 1 if there is no such job)."""
    from app.errors import JobNotFound
    from app.operate import reads as service

    async def load(engine: AsyncEngine) -> tuple[Row[Any], list[Row[Any]]]:
        async with engine.connect() as conn:
            return await service.get(conn, job_id), await service.attempts_of(conn, job_id)

    try:
        job, attempts = with_database(load)
    except JobNotFound as error:
        fail(str(error))
    if as_json:
        print_json({**job_json(job), "attempts": [_attempt_json(a) for a in attempts]})
        return
    console = stdout()
    console.print(
        fields(
            (
                ("id", str(job.id)),
                ("task", job.task),
                ("queue", job.queue),
                ("state", state_text(job.state)),
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
            )
        )
    )
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


@app.command("cancel")
def jobs_cancel(job_id: Annotated[UUID, typer.Argument(help="The job's id")]) -> None:
    """Cancel a job: at once if it has not started; if it runs, ask its worker to stop it (it ends
    cancelled, or succeeded if it finishes first). Exit 1 if it has ended or does not exist."""
    from app.errors import InvalidTransition, JobNotFound
    from app.operate import actions, audit

    async def act(engine: AsyncEngine) -> str:
        async with engine.begin() as conn:
            outcome = await actions.cancel(conn, job_id)
            detail = {"running": True} if outcome == "requested" else None
            await audit.record(
                conn, audit.cli_actor(), audit.Action.JOB_CANCEL, target=str(job_id), detail=detail
            )
            return outcome

    try:
        outcome = with_database(act)
    except (InvalidTransition, JobNotFound) as error:
        fail(str(error))
    if outcome == "requested":
        typer.echo(f"job {job_id} is running: its worker was asked to stop it")
    else:
        typer.echo(f"job {job_id} cancelled: it will not run")


def job_json(row: Row[Any]) -> dict[str, Any]:
    from app.operate.views import job_view

    return job_view(row).model_dump(mode="json")


def _attempt_json(row: Row[Any]) -> dict[str, Any]:
    from app.operate.views import attempt_view

    return attempt_view(row).model_dump(mode="json")


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def _compact(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()
