"""`conveyor queues list|pause|resume`: see each queue, and stop or start what it starts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from app.cli._common import ago, fail, print_json, stdout, with_database

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from app.operate.queues import QueueView

app = typer.Typer(help="Queues: list them; pause and resume what they start.", no_args_is_help=True)

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
