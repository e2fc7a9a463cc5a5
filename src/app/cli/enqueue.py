"""`conveyor enqueue`: one job, validated and stored exactly as the API does it (or a file of
them: `cli.bulk`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.cli._common import fail, task_spec, usage, with_database
from app.jobs.enqueue import MAX_DELAY_SECONDS, MAX_IDEMPOTENCY_KEY_LENGTH
from app.jobs.registry import MAX_PRIORITY

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.jobs.enqueue import Accepted


def enqueue(
    task: Annotated[str, typer.Argument(help="The task: its full name or the last part (echo)")],
    payload: Annotated[str, typer.Option("--payload", "-p", help="The payload, a JSON object")] = "{}",
    delay: Annotated[
        int, typer.Option(min=0, max=MAX_DELAY_SECONDS, help="Seconds to wait before it may run")
    ] = 0,
    priority: Annotated[int, typer.Option(min=0, max=MAX_PRIORITY, help="0 (default) to 9 (first)")] = 0,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Repeat safely: the same key and job return the first job")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="A JSON-lines file, one payload per line: validated whole, then enqueued in batches",
        ),
    ] = None,
) -> None:
    """Enqueue a job, validated like the API does; prints its id. With --file, one job per line."""
    import orjson
    import pydantic

    from app.errors import IdempotencyConflict
    from app.jobs import enqueue as accepting

    spec = task_spec(task)
    if file is not None:
        if payload != "{}":
            usage("give --payload or --file, not both")
        from app.cli.bulk import enqueue_file

        enqueue_file(spec, file, delay=delay, priority=priority, idempotency_key=idempotency_key)
        return
    try:
        raw = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        usage(f"--payload is not valid JSON: {error}")
    if not isinstance(raw, dict):
        usage("--payload must be a JSON object")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        usage(f"--idempotency-key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters")
    try:
        job = accepting.new_job(
            spec, raw, delay_seconds=delay, priority=priority, idempotency_key=idempotency_key
        )
    except pydantic.ValidationError as error:
        usage("invalid payload: " + "; ".join(_field_error(e) for e in error.errors()))

    async def store(engine: AsyncEngine) -> Accepted:
        async with engine.begin() as conn:
            return await accepting.store(conn, job)

    try:
        accepted = with_database(store)
    except IdempotencyConflict as error:
        fail(str(error))
    again = " (the key was used before: the first job)" if accepted.duplicate else ""
    typer.echo(f"{accepted.task} {accepted.state}{again}", err=True)
    typer.echo(str(accepted.id))


def _field_error(error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "payload"
    return f"{where}: {error.get('msg', '')}"
