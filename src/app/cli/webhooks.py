"""`conveyor webhooks list|create|delete|deliveries|replay`: subscriptions and their deliveries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer
from rich.table import Table

from app.cli._common import ago, fail, print_json, stdout, with_database

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

app = typer.Typer(
    help="Webhooks: subscribe URLs to job events; see and replay deliveries.", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
WebhookArgument = Annotated[UUID, typer.Argument(help="The subscription's id (see `conveyor webhooks list`)")]


def _run(work: Any) -> Any:
    """Run `work` on the ledger, turning the webhooks' refusals into a message and exit code 1."""
    from app.errors import DeliveryNotReplayable, WebhookNotFound, WebhookTargetRefused

    try:
        return with_database(work)
    except (WebhookNotFound, WebhookTargetRefused, DeliveryNotReplayable, ValueError) as error:
        fail(str(error))


@app.command("list")
def webhooks_list(as_json: JsonOption = False) -> None:
    """Every subscription: its URL, events, task, and deliveries waiting or dead."""
    from app.webhooks import subscriptions

    async def load(engine: AsyncEngine) -> list[subscriptions.WebhookView]:
        async with engine.connect() as conn:
            return await subscriptions.all_subscriptions(conn)

    views = _run(load)
    if as_json:
        print_json([view.model_dump(mode="json") for view in views])
        return
    table = Table("ID", "URL", "EVENTS", "TASK", "PENDING", "DEAD", "CREATED")
    for view in views:
        table.add_row(
            str(view.id),
            view.url,
            ",".join(view.events),
            view.task or "(all)",
            str(view.pending),
            str(view.dead),
            ago(view.created_at),
        )
    stdout().print(table)


@app.command("create")
def webhooks_create(
    url: Annotated[str, typer.Argument(help="Where deliveries are POSTed")],
    events: Annotated[str, typer.Option("--events", help="Comma-separated, e.g. job.succeeded,job.dead")],
    task: Annotated[str | None, typer.Option("--task", help="Only this task's jobs")] = None,
) -> None:
    """Subscribe a URL; prints the signing secret on the last line, once."""
    import app.tasks  # noqa: F401  (the public tasks a subscription may name)
    from app.errors import UnknownTask
    from app.jobs.registry import get_task, public_tasks
    from app.operate import audit
    from app.settings import get_settings
    from app.webhooks import subscriptions

    if task is not None and ((spec := get_task(task)) is None or not spec.public):
        fail(str(UnknownTask(task, [t.name for t in public_tasks()])))
    kinds = [name.strip() for name in events.split(",") if name.strip()]

    async def create(engine: AsyncEngine) -> subscriptions.CreatedWebhook:
        conn: AsyncConnection
        async with engine.begin() as conn:
            actor = audit.cli_actor()
            made = await subscriptions.create(
                conn, get_settings(), url=url, events=kinds, task=task, created_by=actor.key_name
            )
            detail = {"url": made.url, "events": made.events, "task": made.task}
            await audit.record(conn, actor, audit.Action.WEBHOOK_CREATE, target=str(made.id), detail=detail)
            return made

    made = _run(create)
    typer.echo(f"webhook {made.id} → {made.url} ({', '.join(made.events)})")
    typer.echo("signing secret (shown once):")
    typer.echo(made.secret)


@app.command("delete")
def webhooks_delete(webhook_id: WebhookArgument) -> None:
    """Unsubscribe: nothing more is sent to it, and its deliveries go."""
    from app.operate import audit
    from app.webhooks import subscriptions

    async def delete(engine: AsyncEngine) -> None:
        conn: AsyncConnection
        async with engine.begin() as conn:
            url = await subscriptions.delete(conn, webhook_id)
            await audit.record(
                conn,
                audit.cli_actor(),
                audit.Action.WEBHOOK_DELETE,
                target=str(webhook_id),
                detail={"url": url},
            )

    _run(delete)
    typer.echo(f"deleted webhook {webhook_id}")


@app.command("deliveries")
def webhooks_deliveries(
    webhook_id: WebhookArgument,
    state: Annotated[str | None, typer.Option(help="pending, delivered or dead")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    as_json: JsonOption = False,
) -> None:
    """A subscription's deliveries, newest first: attempts, last status and error."""
    from app.webhooks import subscriptions

    if state is not None and state not in subscriptions.DELIVERY_STATES:
        fail(f"unknown state {state!r}; states: {', '.join(subscriptions.DELIVERY_STATES)}", 2)

    async def load(engine: AsyncEngine) -> subscriptions.DeliveryList:
        async with engine.connect() as conn:
            return await subscriptions.deliveries(conn, webhook_id, state=state, limit=limit)

    page = _run(load)
    if as_json:
        print_json(page.model_dump(mode="json"))
        return
    table = Table("ID", "EVENT", "TYPE", "JOB", "STATE", "ATTEMPTS", "STATUS", "LAST ERROR")
    for item in page.items:
        status = "" if item.last_status is None else str(item.last_status)
        table.add_row(
            str(item.id),
            item.event_id,
            item.type,
            str(item.job_id),
            item.state,
            str(item.attempts),
            status,
            (item.last_error or "")[:60],
        )
    stdout().print(table)


@app.command("replay")
def webhooks_replay(
    webhook_id: WebhookArgument,
    delivery_id: Annotated[
        int, typer.Argument(help="The delivery's id (see `conveyor webhooks deliveries`)")
    ],
) -> None:
    """Send a dead (or delivered) delivery again, with the same event id."""
    from app.operate import audit
    from app.webhooks import subscriptions

    async def replay(engine: AsyncEngine) -> None:
        conn: AsyncConnection
        async with engine.begin() as conn:
            await subscriptions.replay(conn, webhook_id, delivery_id)
            await audit.record(
                conn,
                audit.cli_actor(),
                audit.Action.WEBHOOK_REPLAY,
                target=str(webhook_id),
                detail={"delivery_id": delivery_id},
            )

    _run(replay)
    typer.echo(f"delivery {delivery_id} will be sent again")
