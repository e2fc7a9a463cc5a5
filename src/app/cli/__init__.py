"""`conveyor`: run the service's processes and operate it."""

from __future__ import annotations

import typer

from app.cli import load, ops, serve

cli = typer.Typer(
    name="conveyor",
    help="Conveyor: background jobs you can trust.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
serve.register(cli)
load.register(cli)
ops.register(cli)


def main() -> None:
    cli()
