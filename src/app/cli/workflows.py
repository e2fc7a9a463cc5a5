"""`conveyor workflows list|show|cancel`: workflows in the ledger, read and cancelled directly, so
they work while the API is down."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated
from uuid import UUID

import typer
from rich.table import Table
from rich.text import Text

from app.cli._common import fail, fields, print_json, short, stdout, usage, when, with_database
from app.cli.jobs import JsonOption, state_text
from app.operate.workflows import WorkflowState

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.operate.actions import WorkflowCancel
    from app.operate.workflows import WorkflowList, WorkflowView

app = typer.Typer(help="Look at workflows in the ledger, and cancel one.", no_args_is_help=True)

WORKFLOW_STYLES = {"running": "blue", "succeeded": "green", "failed": "red"}


def workflow_state(state: str) -> Text:
    return Text(state, style=WORKFLOW_STYLES.get(state, ""))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items()))


@app.command("list")
def workflows_list(
    state: Annotated[WorkflowState | None, typer.Option(help="Only workflows in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many workflows")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Continue after a previous page")] = None,
    as_json: JsonOption = False,
) -> None:
    """List workflows, newest first."""
    from app.operate import workflows as service
    from app.operate.reads import decode_cursor

    if cursor is not None:
        try:
            decode_cursor(cursor)
        except ValueError:
            usage(f"--cursor {cursor!r} is not a cursor this command printed")

    async def page(engine: AsyncEngine) -> WorkflowList:
        async with engine.connect() as conn:
            return await service.page(conn, state=state.value if state else None, limit=limit, cursor=cursor)

    found = with_database(page)
    if as_json:
        print_json(found.model_dump(mode="json"))
        return
    if not found.items:
        typer.echo("no workflows match", err=True)
        return
    table = Table("ID", "NAME", "STATE", "STEPS", "CREATED", "FINISHED")
    for item in found.items:
        table.add_row(
            str(item.id),
            item.name,
            workflow_state(item.state),
            _counts(item.counts),
            when(item.created_at),
            when(item.finished_at),
        )
    stdout().print(table)
    if found.next_cursor:
        typer.echo(f"more: --cursor {found.next_cursor}", err=True)


@app.command("show")
def workflows_show(
    workflow_id: Annotated[UUID, typer.Argument(help="The workflow's id")], as_json: JsonOption = False
) -> None:
    """Show one workflow and its steps, by depth (exit 1 if there is no such workflow)."""
    from app.errors import WorkflowNotFound
    from app.operate import workflows as service

    async def load(engine: AsyncEngine) -> WorkflowView:
        async with engine.connect() as conn:
            return await service.get(conn, workflow_id)

    try:
        found = with_database(load)
    except WorkflowNotFound as error:
        fail(str(error))
    if as_json:
        print_json(found.model_dump(mode="json"))
        return
    console = stdout()
    console.print(
        fields(
            (
                ("id", str(found.id)),
                ("name", found.name),
                ("state", workflow_state(found.state)),
                ("steps", _counts(found.counts)),
                ("created", when(found.created_at)),
                ("finished", when(found.finished_at)),
            )
        )
    )
    steps = Table("STEP", "DEPTH", "STATE", "TASK", "AFTER", "JOB", "LAST ERROR")
    for step, view in (found.steps or {}).items():
        steps.add_row(
            step,
            str(view.depth),
            state_text(view.state),
            view.task,
            ", ".join(view.after) or "-",
            str(view.job_id),
            short(view.last_error),
        )
    console.print()
    console.print(steps)


@app.command("cancel")
def workflows_cancel(workflow_id: Annotated[UUID, typer.Argument(help="The workflow's id")]) -> None:
    """Cancel a workflow: its steps that have not started will not run; running steps are asked
    to stop. Exit 1 if every step has finished or there is no such workflow."""
    from app.errors import WorkflowEnded, WorkflowNotFound
    from app.operate import actions, audit

    async def act(engine: AsyncEngine) -> WorkflowCancel:
        async with engine.begin() as conn:
            return await actions.cancel_workflow(conn, workflow_id, audit.cli_actor())

    try:
        done = with_database(act)
    except (WorkflowEnded, WorkflowNotFound) as error:
        fail(str(error))
    typer.echo(f"workflow {workflow_id}: cancelled {done.cancelled} step(s) that had not started")
    if done.requested:
        typer.echo(f"asked the workers of {done.requested} running step(s) to stop them")
