"""`conveyor audit`: who did what, read from the ledger directly (it works while the API is down)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from app.cli._common import print_json, short, stdout, usage, when, with_database

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.operate.audit import Entry

DETAIL_CHARS = 60


def audit_log(
    action: Annotated[str | None, typer.Option(help="Only this action, e.g. job.replay")] = None,
    key: Annotated[str | None, typer.Option(help="Only what this key (or cli:user@host) did")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many entries")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Continue after a previous page")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Show the audit log newest first: operator actions, key changes, sign-ins and sign-outs."""
    import orjson

    from app.operate import audit

    async def page(engine: AsyncEngine) -> tuple[list[Entry], str | None]:
        async with engine.connect() as conn:
            return await audit.page(conn, action=action, key_name=key, cursor=cursor, limit=limit)

    try:
        entries, next_cursor = with_database(page)
    except ValueError:
        usage(f"--cursor {cursor!r} is not a cursor this command printed")
    if as_json:
        items = [audit.entry_view(entry).model_dump(mode="json") for entry in entries]
        print_json({"items": items, "next_cursor": next_cursor})
        return
    if not entries:
        typer.echo("no audit entries match", err=True)
        return
    table = Table("WHEN", "WHO", "ACTION", "TARGET", "COUNT", "FROM", "REQUEST", "DETAIL")
    for entry in entries:
        table.add_row(
            when(entry.at),
            entry.key_name,
            entry.action,
            entry.target or "-",
            "-" if entry.count is None else str(entry.count),
            entry.client_address or "-",
            entry.request_id or "-",
            short(orjson.dumps(entry.detail).decode(), DETAIL_CHARS) if entry.detail else "-",
        )
    stdout().print(table)
    if next_cursor:
        typer.echo(f"more: --cursor {next_cursor}", err=True)
