"""`conveyor dlq list|replay|purge`: the dead letters, from the ledger, and their broker copies.

Bulk operations go through `app.operate.actions` (the same batches as the API and the
dashboard) and stop at the count the operator confirmed. Afterwards the stale copies in
`<queue>.XQ` are removed (all of them for `purge --all`); the ledger stays the truth if the
broker cannot be reached, with a warning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.cli._common import (
    fail,
    print_json,
    short,
    stderr,
    stdout,
    task_filter,
    task_queues,
    usage,
    warn,
    when,
    with_database,
)

if TYPE_CHECKING:
    from sqlalchemy import Row
    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.ledger.jobs import DeadRun
    from app.operate.actions import BulkAction

app = typer.Typer(help="Dead jobs: list them, replay them, purge them.", no_args_is_help=True)

IdsArgument = Annotated[list[UUID] | None, typer.Argument(help="Ids of dead jobs", show_default=False)]
TaskOption = Annotated[str | None, typer.Option(help="Every dead job of this task")]
AllOption = Annotated[bool, typer.Option("--all", help="Every dead job")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")]
PAST = {"replay": "replayed", "purge": "purged"}


@app.command("list")
def dlq_list(
    task: Annotated[str | None, typer.Option(help="Only dead jobs of this task")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many jobs")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """List dead jobs, most recent first, with their last error."""
    from app.operate import reads, stats

    task_name = task_filter(task)

    async def load(engine: AsyncEngine) -> tuple[int, list[Row[Any]]]:
        async with engine.connect() as conn:
            total = await stats.count_dead(conn, task_name)
            rows, _ = await reads.page(conn, state="dead", task=task_name, limit=limit)
            return total, rows

    total, rows = with_database(load)
    if as_json:
        from app.cli.jobs import job_json

        print_json({"total": total, "items": [job_json(row) for row in rows]})
        return
    if total == 0:
        typer.echo("no dead jobs", err=True)
        return
    table = Table("ID", "TASK", "ATTEMPTS", "DIED", "LAST ERROR", title=f"{total} dead job(s)")
    for row in rows:
        table.add_row(
            str(row.id),
            row.task,
            f"{row.attempts}/{row.max_attempts}",
            when(row.finished_at),
            short(row.last_error, 100),
        )
    stdout().print(table)
    if total > len(rows):
        typer.echo(f"showing {len(rows)} of {total}; --limit shows more", err=True)


@app.command("replay")
def replay(
    ids: IdsArgument = None, task: TaskOption = None, all_: AllOption = False, yes: YesOption = False
) -> None:
    """Replay dead jobs: back to queued, attempts from 0, history kept. Asks first for --task/--all."""
    _bulk("replay", ids, task, all_, ask=not ids and not yes)


@app.command("purge")
def purge(
    ids: IdsArgument = None, task: TaskOption = None, all_: AllOption = False, yes: YesOption = False
) -> None:
    """Delete dead jobs and their history for good. Always asks first, unless --yes."""
    _bulk("purge", ids, task, all_, ask=not yes)


def _bulk(verb: str, ids: list[UUID] | None, task: str | None, all_: bool, ask: bool) -> None:
    if sum((bool(ids), task is not None, all_)) != 1:
        usage(f"name what to {verb}: job ids, --task TASK or --all (exactly one of them)")
    action: BulkAction = "replay" if verb == "replay" else "discard"
    task_name = task_filter(task)
    refused: list[str] = []
    if ids:
        wanted = list(dict.fromkeys(ids))
        if ask:
            typer.confirm(f"{verb.capitalize()} {len(wanted)} dead job(s) for good?", abort=True)
        done, refused = with_database(lambda engine: _by_ids(engine, action, wanted))
    else:
        total = with_database(lambda engine: _count(engine, task_name))
        scope = f"of task {task_name}" if task_name else "(all of them)"
        if total == 0:
            typer.echo(f"no dead jobs {scope}", err=True)
            return
        if ask:
            typer.confirm(f"{verb.capitalize()} {total} dead job(s) {scope}?", abort=True)
        done = with_database(lambda engine: _in_batches(engine, action, verb, task_name, total))
    typer.echo(f"{PAST[verb]} {len(done)} dead job(s)")
    _clean_broker(done, purge_all=verb == "purge" and all_)
    if refused:
        fail("\n".join(refused))


async def _count(engine: AsyncEngine, task: str | None) -> int:
    from app.operate import stats

    async with engine.connect() as conn:
        return await stats.count_dead(conn, task)


async def _by_ids(
    engine: AsyncEngine, action: BulkAction, ids: list[UUID]
) -> tuple[list[DeadRun], list[str]]:
    """The named jobs in one transaction; a line for each one that was not dead."""
    from app.ledger import jobs as ledger
    from app.operate import actions, audit

    verb = audit.Action.JOB_REPLAY if action == "replay" else audit.Action.JOB_DISCARD
    who = audit.cli_actor()
    async with engine.begin() as conn:
        done = await actions.on_dead(conn, action, ids=ids)
        for run in done:
            await audit.record(conn, who, verb, target=str(run.id))
        acted = {run.id for run in done}
        refused = []
        for job_id in ids:
            if job_id not in acted:
                state = await ledger.job_state(conn, job_id)
                refused.append(
                    f"job {job_id} not found"
                    if state is None
                    else f"job {job_id} is {state}, not dead: left alone"
                )
    return done, refused


async def _in_batches(
    engine: AsyncEngine, action: BulkAction, verb: str, task: str | None, total: int
) -> list[DeadRun]:
    from app.operate import actions
    from app.operate.audit import cli_actor

    with _progress() as progress:
        bar = progress.add_task(verb, total=total)
        return await actions.bulk(
            engine,
            action,
            task=task,
            up_to=total,
            progress=lambda n: progress.advance(bar, n),
            actor=cli_actor(),
        )


def _clean_broker(done: list[DeadRun], *, purge_all: bool) -> None:
    """After the commit: empty the dead-letter queues (`purge --all`), or take the replayed or
    purged runs' stale copies out of them now rather than at the relay's next pass."""
    from app import transport
    from app.ledger.engines import sync_engine
    from app.logs import first_line
    from app.relay import deadletters as stale_copies
    from app.settings import get_settings

    url = get_settings().broker_url
    if url.startswith("stub") or (not done and not purge_all):
        return
    purged: dict[str, int] = {}
    try:
        if purge_all:
            purged = transport.purge_dead(url, {*task_queues(), *(run.queue for run in done)})
            typer.echo(f"emptied the dead-letter queues: {sum(purged.values())} message(s)")
        else:
            with _progress() as progress:
                total = sum(transport.dead_depth(url, queue) for queue in {run.queue for run in done})
                bar = progress.add_task("dead-letter copies", total=total)
                removed = stale_copies.clean(sync_engine(), url, lambda n: progress.advance(bar, n))
            typer.echo(f"removed {removed} stale message(s) from the dead-letter queues")
    except Exception as error:
        warn(
            f"the ledger is done; the stale dead-letter copies are left for the relay to remove: "
            f"{first_line(error)}"
        )
    if purged:
        with_database(lambda engine: _record_purge(engine, purged))


async def _record_purge(engine: AsyncEngine, purged: dict[str, int]) -> None:
    """`dlq.purge`: the broker has no transaction to share, so it is written once the queues
    are empty, with how many messages each held."""
    from app.operate import audit

    async with engine.begin() as conn:
        await audit.record(
            conn, audit.cli_actor(), audit.Action.DLQ_PURGE, count=sum(purged.values()), detail=purged
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
