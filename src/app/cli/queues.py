"""`conveyor queues list|pause|resume|migrate`: see each queue, stop or start what it starts, and
declare its RabbitMQ queues again with the type BROKER_QUEUE_TYPE asks for."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from app.cli._common import ago, fail, print_json, stdout, task_queues, warn, with_database

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from app.operate.queue_types import Republish, Step
    from app.operate.queues import QueueView

app = typer.Typer(
    help="Queues: list them; pause and resume what they start; migrate their type.", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
QueueArgument = Annotated[str, typer.Argument(help="The queue's name (see `conveyor queues list`)")]


@app.command("list")
def queues_list(as_json: JsonOption = False) -> None:
    """Each queue: paused or running, jobs waiting, jobs running, the oldest waiting."""
    from app.operate import queues as operating

    async def load(engine: AsyncEngine) -> list[QueueView]:
        async with engine.connect() as conn:
            return await operating.overview(conn)

    views = with_database(load)
    if as_json:
        print_json([view.model_dump(mode="json") for view in views])
        return
    table = Table("QUEUE", "STATUS", "WAITING", "RUNNING", "OLDEST WAITING")
    for view in views:
        status = "paused" if view.paused else "active"
        table.add_row(view.name, status, str(view.depth), str(view.running), ago(view.oldest_waiting_at))
    stdout().print(table)


def _act(queue: str, verb: str) -> None:
    from app.errors import QueueNotFound
    from app.operate import audit
    from app.operate import queues as operating

    acts = {"pause": operating.pause, "resume": operating.resume}

    async def act(engine: AsyncEngine) -> None:
        conn: AsyncConnection
        async with engine.begin() as conn:
            await acts[verb](conn, queue)
            await audit.record(conn, audit.cli_actor(), audit.Action(f"queue.{verb}"), target=queue)

    try:
        with_database(act)
    except QueueNotFound as error:
        fail(f"{error}; queues: {', '.join(operating.names())}")
    typer.echo({"pause": "paused", "resume": "resumed"}[verb] + f" {queue}")


@app.command("pause")
def queues_pause(queue: QueueArgument) -> None:
    """Pause a queue: it starts nothing new (running jobs finish; accepting goes on)."""
    _act(queue, "pause")


@app.command("resume")
def queues_resume(queue: QueueArgument) -> None:
    """Resume a queue: the jobs it held start again."""
    _act(queue, "resume")


DONE = {"keep": "kept", "declare": "declared", "remake": "re-made"}
WOULD = {"keep": "would keep", "declare": "would declare", "remake": "would re-make"}


@app.command("migrate")
def queues_migrate(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what it would do; change nothing")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Re-make queues even while workers consume them")
    ] = False,
) -> None:
    """Declare every queue (and its .DQ and .XQ) again with the type BROKER_QUEUE_TYPE asks for.

    A queue's type cannot change in place: each queue of the other type is deleted and declared
    again, and the ledger publishes again what it held (jobs published and not claimed, dead
    jobs' copies). Stop the workers first, and give every process the new BROKER_QUEUE_TYPE.
    """
    from app import transport
    from app.logs import first_line
    from app.operate import queue_types
    from app.settings import get_settings

    settings = get_settings()
    if transport.kind(settings.broker_url) != "rabbitmq":
        fail("queues have a type on RabbitMQ only; BROKER_URL names no RabbitMQ")
    wanted = settings.broker_queue_type
    try:
        steps = queue_types.plan(settings.broker_url, task_queues(), wanted)
    except Exception as error:
        fail(f"cannot read the queues: {first_line(error) or type(error).__name__}")
    consumed = queue_types.busy(steps)
    if consumed and not force:
        names = ", ".join(f"{step.state.name} ({step.state.consumers})" for step in consumed)
        message = f"workers consume queues to re-make: {names}; stop them first (or use --force)"
        if not dry_run:
            fail(message)
        warn(message)
    if queue_types.republishing(steps):  # a queue to declare or re-make: the ledger has a part
        republish, counts, failed = with_database(partial(_migrate, settings.broker_url, steps, dry_run))
        verb = "would be published again" if dry_run else "marked to publish again"
        for what, (jobs, dead) in zip(republish, counts, strict=True):
            typer.echo(f"{what.queue}: {jobs} job(s) and {dead} dead-letter copy(ies) {verb} from the ledger")
    else:
        failed = _migrate_all(settings.broker_url, steps, dry_run)[1]
    if failed:
        fail(f"stopped at {failed}; run it again once that is solved")
    moved = sum(step.action != "keep" for step in steps)
    if not moved:
        typer.echo(f"nothing to do: every queue is {wanted}")
    elif not dry_run:
        typer.echo(f"done: {moved} queue(s) declared as {wanted}")


def _migrate_one(broker_url: str, step: Step, dry_run: bool) -> int:
    """Keep, declare or re-make one queue, and say so; how many messages went with it."""
    from app.errors import QueueTypeMismatch
    from app.operate import queue_types

    was = step.has or "absent"
    change = f"{was} -> {step.wanted}" if step.action != "keep" else step.wanted
    line = f"{step.state.name:<16} {change:<20} {(WOULD if dry_run else DONE)[step.action]}"
    held = 0
    if step.action == "remake":
        held = step.state.messages
        if not dry_run:
            try:
                held = queue_types.remake(broker_url, step)
            except QueueTypeMismatch as error:
                # Deleted, then declared by a process with the other setting before us.
                raise RuntimeError(f"declared again with the other type meanwhile: {error}") from error
        line += f" ({held} message(s) {'would go' if dry_run else 'went'} with it)"
    elif step.action == "declare" and not dry_run:
        queue_types.remake(broker_url, step)
    typer.echo(line)
    return held


def _migrate_all(broker_url: str, steps: list[Step], dry_run: bool) -> tuple[dict[str, int], str | None]:
    """Each step in order (a queue's .DQ and .XQ after it) up to the first that fails: how many
    messages went with each queue done, and what failed."""
    from app.logs import first_line

    dropped: dict[str, int] = {}
    for step in steps:
        try:
            dropped[step.state.name] = _migrate_one(broker_url, step, dry_run)
        except Exception as error:
            dropped[step.state.name] = step.state.messages  # it may be deleted already
            return dropped, f"{step.state.name}: {first_line(error) or type(error).__name__}"
    return dropped, None


async def _migrate(
    broker_url: str, steps: list[Step], dry_run: bool, engine: AsyncEngine
) -> tuple[list[Republish], list[tuple[int, int]], str | None]:
    """Re-make the queues, and mark what they lost to be published again (also when a queue
    failed), each queue's with its audit entry, in one transaction that holds those jobs from
    before the first delete: no relay publishes one into a re-made queue before it is marked."""
    from app.operate import audit, queue_types

    conn: AsyncConnection
    async with engine.begin() as conn:
        held = {}
        if not dry_run:
            for what in queue_types.republishing(steps):
                held[what.queue] = await queue_types.hold(conn, what)
        dropped, failed = _migrate_all(broker_url, steps, dry_run)
        done = [step for step in steps if step.state.name in dropped]
        republish = queue_types.republishing(done)
        counts = []
        for what in republish:
            jobs, dead = await queue_types.republish(conn, what, held.get(what.queue, ()), apply=not dry_run)
            counts.append((jobs, dead))
            if dry_run:
                continue
            names = [s.state.name for s in done if s.state.queue == what.queue and s.action != "keep"]
            detail = {
                "type": steps[0].wanted,
                "declared": names,
                "messages": sum(dropped[name] for name in names),
                "jobs": jobs,
                "dead_copies": dead,
            }
            action = audit.Action.QUEUE_MIGRATE
            await audit.record(conn, audit.cli_actor(), action, target=what.queue, count=jobs, detail=detail)
    return republish, counts, failed
