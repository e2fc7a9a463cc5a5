"""`conveyor dlq list|replay|purge`: the dead letters, from the ledger, and their broker copies.

Bulk operations walk the dead jobs once, oldest first, in chunks of CHUNK_SIZE (one
transaction each), and stop at the count the operator confirmed. Afterwards the stale
copies in `<queue>.XQ` are removed (all of them for `purge --all`); the ledger stays the
truth if the broker cannot be reached, with a warning.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
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
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

app = typer.Typer(help="Dead jobs: list them, replay them, purge them.", no_args_is_help=True)

# Big enough that 100,000 dead jobs take 200 short transactions; small enough that each
# holds its row locks for milliseconds.
CHUNK_SIZE = 500

Operation = Callable[..., Awaitable[list[UUID]]]
IdsArgument = Annotated[list[UUID] | None, typer.Argument(help="Ids of dead jobs", show_default=False)]
TaskOption = Annotated[str | None, typer.Option(help="Every dead job of this task")]
AllOption = Annotated[bool, typer.Option("--all", help="Every dead job")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")]


@dataclass
class Outcome:
    done: dict[str, list[UUID]] = field(default_factory=lambda: defaultdict(list))
    refused: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(ids) for ids in self.done.values())


@app.command("list")
def dlq_list(
    task: Annotated[str | None, typer.Option(help="Only dead jobs of this task")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many jobs")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """List dead jobs, most recent first, with their last error."""
    from app.services import jobs as service
    from app.services import stats

    task_name = task_filter(task)

    async def load(engine: AsyncEngine) -> tuple[int, list[Row[Any]]]:
        async with engine.connect() as conn:
            total = await stats.count_dead(conn, task_name)
            rows, _ = await service.page(conn, state="dead", task=task_name, limit=limit)
            return total, rows

    total, rows = with_database(load)
    if as_json:
        from app.api.jobs import job_view

        print_json({"total": total, "items": [job_view(row).model_dump(mode="json") for row in rows]})
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
    from app.services import jobs as service

    _bulk("replay", service.replay_dead, ids, task, all_, ask=not ids and not yes)


@app.command("purge")
def purge(
    ids: IdsArgument = None, task: TaskOption = None, all_: AllOption = False, yes: YesOption = False
) -> None:
    """Delete dead jobs and their history for good. Always asks first, unless --yes."""
    from app.services import jobs as service

    _bulk("purge", service.discard_dead, ids, task, all_, ask=not yes)


def _bulk(
    verb: str, operation: Operation, ids: list[UUID] | None, task: str | None, all_: bool, ask: bool
) -> None:
    if sum((bool(ids), task is not None, all_)) != 1:
        usage(f"name what to {verb}: job ids, --task TASK or --all (exactly one of them)")
    task_name = task_filter(task)
    if ids:
        wanted = list(dict.fromkeys(ids))
        if ask:
            typer.confirm(f"{verb.capitalize()} {len(wanted)} dead job(s) for good?", abort=True)
        outcome = with_database(lambda engine: _by_ids(engine, operation, wanted))
    else:
        total = with_database(lambda engine: _count(engine, task_name))
        scope = f"of task {task_name}" if task_name else "(all of them)"
        if total == 0:
            typer.echo(f"no dead jobs {scope}", err=True)
            return
        if ask:
            typer.confirm(f"{verb.capitalize()} {total} dead job(s) {scope}?", abort=True)
        outcome = with_database(lambda engine: _in_chunks(engine, operation, verb, task_name, total))
    past = {"replay": "replayed", "purge": "purged"}[verb]
    typer.echo(f"{past} {outcome.count} dead job(s)")
    _clean_broker(outcome, purge_all=verb == "purge" and all_)
    if outcome.refused:
        fail("\n".join(outcome.refused))


async def _count(engine: AsyncEngine, task: str | None) -> int:
    from app.services import stats

    async with engine.connect() as conn:
        return await stats.count_dead(conn, task)


async def _by_ids(engine: AsyncEngine, operation: Operation, ids: list[UUID]) -> Outcome:
    from sqlalchemy import select

    from app.db.schema import jobs

    outcome = Outcome()
    async with engine.begin() as conn:
        found = {
            row.id: row
            for row in (
                await conn.execute(select(jobs.c.id, jobs.c.queue, jobs.c.state).where(jobs.c.id.in_(ids)))
            )
        }
        done = set(await operation(conn, ids=ids, limit=len(ids)))
    for job_id in ids:
        if job_id in done:
            outcome.done[found[job_id].queue].append(job_id)
        elif job_id in found:
            outcome.refused.append(f"job {job_id} is {found[job_id].state}, not dead: left alone")
        else:
            outcome.refused.append(f"job {job_id} not found")
    return outcome


async def _in_chunks(
    engine: AsyncEngine, operation: Operation, verb: str, task: str | None, total: int
) -> Outcome:
    from app.services import stats

    outcome = Outcome()
    after = None
    seen = 0
    with _progress() as progress:
        bar = progress.add_task(verb, total=total)
        while seen < total:
            async with engine.connect() as conn:
                chunk = await stats.dead_letters(
                    conn, task=task, after=after, limit=min(CHUNK_SIZE, total - seen)
                )
            if not chunk:
                break
            async with engine.begin() as conn:
                done = set(await _apply(conn, operation, [letter.id for letter in chunk]))
            for letter in chunk:
                if letter.id in done:
                    outcome.done[letter.queue].append(letter.id)
            after = chunk[-1]
            seen += len(chunk)
            progress.advance(bar, len(chunk))
    return outcome


async def _apply(conn: AsyncConnection, operation: Operation, ids: list[UUID]) -> list[UUID]:
    return await operation(conn, ids=ids, limit=len(ids))


def _clean_broker(outcome: Outcome, *, purge_all: bool) -> None:
    from app import deadletters
    from app.health import first_line
    from app.settings import get_settings

    url = get_settings().broker_url
    if url.startswith("stub") or (not outcome.done and not purge_all):
        return
    try:
        if purge_all:
            purged = deadletters.purge(url, {*task_queues(), *outcome.done})
            typer.echo(f"emptied the dead-letter queues: {sum(purged.values())} message(s)")
            return
        removed = 0
        with _progress() as progress:
            for queue, ids in sorted(outcome.done.items()):
                bar = progress.add_task(f"{queue}.XQ", total=deadletters.depth(url, queue))

                def advance(n: int, bar: TaskID = bar) -> None:
                    progress.advance(bar, n)

                removed += deadletters.remove(url, queue, ids, advance)
        typer.echo(f"removed {removed} stale message(s) from the dead-letter queues")
    except Exception as error:
        warn(
            f"the ledger is done, but the broker's dead-letter copies were left "
            f"(they expire in 7 days): {first_line(error) or type(error).__name__}"
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
