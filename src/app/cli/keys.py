"""`conveyor keys create|list|revoke`: API keys, shown once at creation, stored only as a hash."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from app.cli._common import fail, print_json, stdout, usage, when

app = typer.Typer(help="API keys: create them (shown once), list them, revoke them.", no_args_is_help=True)


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A name for the key: who or what uses it")],
    scopes: Annotated[
        str, typer.Option("--scopes", "-s", help="Comma-separated: enqueue, read, operate, metrics")
    ] = "enqueue,read",
) -> None:
    """Create a key and print it on the last line. It is never shown again: store it now."""
    from app.access import keys
    from app.errors import KeyNameTaken
    from app.ledger.engines import sync_engine
    from app.operate import audit

    try:
        chosen = keys.parse_scopes(scopes)
        with sync_engine().begin() as conn:
            token = keys.create(conn, name, chosen)
            audit.record_sync(
                conn,
                audit.cli_actor(),
                audit.Action.KEY_CREATE,
                target=name,
                detail={"scopes": sorted(chosen)},
            )
    except ValueError as error:
        usage(str(error))
    except KeyNameTaken as error:
        fail(str(error))
    typer.echo(f"created key {name!r} with scopes {', '.join(sorted(chosen))}; it is shown once:", err=True)
    typer.echo(token)


@app.command("list")
def list_keys(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """List keys: name, scopes, created, last used, revoked. Never a key."""
    from app.ledger import keys as stored
    from app.ledger.engines import sync_engine

    with sync_engine().connect() as conn:
        rows = stored.listing(conn)
    if as_json:
        print_json(
            [
                {
                    "name": r.name,
                    "scopes": list(r.scopes),
                    "created_at": r.created_at,
                    "last_used_at": r.last_used_at,
                    "revoked_at": r.revoked_at,
                }
                for r in rows
            ]
        )
        return
    if not rows:
        typer.echo("no keys yet: conveyor keys create NAME --scopes enqueue,read", err=True)
        return
    table = Table("NAME", "SCOPES", "CREATED", "LAST USED", "REVOKED")
    for r in rows:
        table.add_row(
            r.name, ",".join(r.scopes), when(r.created_at), when(r.last_used_at), when(r.revoked_at)
        )
    stdout().print(table)


@app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The key's name")]) -> None:
    """Revoke a key: every API process refuses it within KEYS_CACHE_SECONDS."""
    from app.access import keys
    from app.errors import KeyNotFound
    from app.ledger.engines import sync_engine
    from app.operate import audit

    try:
        with sync_engine().begin() as conn:
            keys.revoke(conn, name)
            audit.record_sync(conn, audit.cli_actor(), audit.Action.KEY_REVOKE, target=name)
    except KeyNotFound as error:
        fail(str(error))
    typer.echo(f"revoked key {name!r}")
