"""`conveyor schedules list|add|pause|resume|delete` and `conveyor prune`: time, from the shell.

Schedules are read and written in the ledger directly, validated as the API validates them,
so the commands work while the API is down. `conveyor prune` runs the relay's pruning pass
once, by hand (`--dry-run`: only count what it would delete).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.cli._common import ago, fail, print_json, stderr, stdout, task_spec, usage, when, with_database

if TYPE_CHECKING:
    from sqlalchemy import Row
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

app = typer.Typer(
    help="Schedules: tasks fired on a cron expression or every N seconds.", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
NameArgument = Annotated[str, typer.Argument(help="The schedule's name")]


@app.command("list")
def schedules_list(as_json: JsonOption = False) -> None:
    """List schedules by name, with their next and last run."""
    from app.operate import schedules as operating

    async def load(engine: AsyncEngine) -> list[Row[Any]]:
        rows: list[Row[Any]] = []
        cursor = None
        async with engine.connect() as conn:
            while True:
                page, cursor = await operating.page(conn, limit=200, cursor=cursor)
                rows += page
                if cursor is None:
                    return rows

    rows = with_database(load)
    if as_json:
        print_json([operating.schedule_view(row).model_dump(mode="json") for row in rows])
        return
    if not rows:
        typer.echo("no schedules", err=True)
        return
    table = Table("NAME", "TASK", "WHEN", "NEXT RUN", "LAST RUN", "STATUS", "SOURCE")
    for row in rows:
        table.add_row(
            row.name,
            row.task,
            operating.describe(row),
            "-" if row.paused else when(row.next_run_at),
            ago(row.last_run_at),
            "paused" if row.paused else "active",
            row.source,
        )
    stdout().print(table)


@app.command("add")
def schedules_add(
    name: NameArgument,
    task: Annotated[str, typer.Option("--task", "-t", help="The task: its full name or the last part")],
    payload: Annotated[str, typer.Option("--payload", "-p", help="The payload, a JSON object")] = "{}",
    cron: Annotated[str | None, typer.Option(help="A 5-field cron expression, e.g. '*/5 * * * *'")] = None,
    every: Annotated[
        int | None, typer.Option(help="Every N seconds (N ≥ MIN_SCHEDULE_INTERVAL_SECONDS, 1 by default)")
    ] = None,
    timezone: Annotated[str, typer.Option(help="The IANA time zone the cron expression is read in")] = "UTC",
) -> None:
    """Add a schedule (exactly one of --cron and --every), validated like the API does."""
    import orjson
    import pydantic

    from app.accept import schedules as accepting
    from app.errors import InvalidSchedule, ScheduleNameTaken, TooManySchedules, UnstorableInput
    from app.jobs.schedules import timing

    spec = task_spec(task)
    try:
        raw = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        usage(f"--payload is not valid JSON: {error}")
    if not isinstance(raw, dict):
        usage("--payload must be a JSON object")
    try:
        draft = accepting.draft(name, spec, raw, timing(cron, every, timezone))
    except InvalidSchedule as error:
        usage(
            str(error)
            .replace("cron and every_seconds", "--cron and --every")
            .replace("every_seconds", "--every")
        )
    except pydantic.ValidationError as error:
        usage("invalid payload: " + "; ".join(_field_error(e) for e in error.errors()))
    except UnstorableInput as error:
        usage(f"invalid payload: {'.'.join(map(str, error.loc))}: {error}")

    async def store(engine: AsyncEngine) -> Any:
        from app.operate import audit

        async with engine.begin() as conn:
            stored = await accepting.store(conn, draft)
            await audit.record_schedule_created(conn, audit.cli_actor(), stored)
            return stored

    try:
        stored = with_database(store)
    except (ScheduleNameTaken, TooManySchedules) as error:
        fail(str(error))
    typer.echo(f"{draft.timing.describe()}, next run {when(stored.next_run_at)} UTC", err=True)
    typer.echo(stored.name)


def _field_error(error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "payload"
    return f"{where}: {error.get('msg', '')}"


def _act(name: str, verb: str) -> None:
    from app.errors import ScheduleNotFound
    from app.operate import audit
    from app.operate import schedules as operating

    acts = {"pause": operating.pause, "resume": operating.resume, "delete": operating.delete}

    async def act(engine: AsyncEngine) -> None:
        conn: AsyncConnection
        async with engine.begin() as conn:
            await acts[verb](conn, name)
            await audit.record(conn, audit.cli_actor(), audit.Action(f"schedule.{verb}"), target=name)

    try:
        with_database(act)
    except ScheduleNotFound as error:
        fail(str(error))
    typer.echo({"pause": "paused", "resume": "resumed", "delete": "deleted"}[verb] + f" {name}")


@app.command("pause")
def schedules_pause(name: NameArgument) -> None:
    """Pause a schedule: it fires nothing until resumed."""
    _act(name, "pause")


@app.command("resume")
def schedules_resume(name: NameArgument) -> None:
    """Resume a schedule from its next tick; what it missed while paused never fires."""
    _act(name, "resume")


@app.command("delete")
def schedules_delete(
    name: NameArgument, yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first")] = False
) -> None:
    """Delete a schedule for good; the jobs it made stay.

    A schedule declared in code comes back when a relay starts: pause it instead.
    """
    if not yes:
        typer.confirm(f"Delete schedule {name}?", abort=True)
    _act(name, "delete")


def prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what a pass would delete")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete finished jobs past their retention (RETAIN_*_SECONDS), with their attempts and
    artifacts, release expired idempotency keys, end expired dashboard sessions, forget
    long-silent workers and relays, delete audit entries past RETAIN_AUDIT_SECONDS: one pass of
    what the relay does every PRUNE_INTERVAL_SECONDS."""
    from sqlalchemy.exc import DBAPIError

    from app.logs import first_line
    from app.relay import pruning

    try:
        planned = pruning.count()
        if dry_run:
            done = planned
        else:
            with _progress() as progress:
                bars = {state: progress.add_task(state, total=n) for state, n in planned.jobs.items()}
                done = pruning.prune(
                    progress=lambda what, n: progress.advance(bars[what], n) if what in bars else None
                )
    except DBAPIError as error:
        fail(f"database error: {first_line(error.orig or error)}")
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "jobs": done.jobs,
                "idempotency_keys_released": done.keys_released,
                "sessions": done.sessions,
                "workers": done.workers,
                "relays": done.relays,
                "audit_entries": done.audit_entries,
                "events": done.events,
            }
        )
        return
    verb = "would delete" if dry_run else "deleted"
    table = Table("STATE", "JOBS")
    for state, count in done.jobs.items():
        table.add_row(state, str(count))
    stdout().print(table)
    typer.echo(f"{verb} {done.total} finished job(s)")
    typer.echo(f"{verb} {done.audit_entries} audit entr{'y' if done.audit_entries == 1 else 'ies'}")
    typer.echo(f"{verb} {done.events} job event(s)")
    if not dry_run:
        typer.echo(
            f"released {done.keys_released} idempotency key(s); ended {done.sessions} expired "
            f"session(s); forgot {done.workers} worker(s) and {done.relays} relay(s)"
        )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr(),
        transient=True,
    )
