"""`conveyor`: run the service's processes and operate it (the commands: `app.cli.commands`).

`conveyor worker` goes to `app.cli.worker` before anything else is imported: the worker's
processes hold only what running jobs needs, not the operating commands' typer, rich,
queries and views (DESIGN.md, Performance budget: the worker's tree under 100 MiB).
"""

from __future__ import annotations

import sys

HELP = {"--help", "-h"}


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["worker"] and not HELP.intersection(args):
        from app.cli.worker import main as worker

        sys.exit(worker(args[1:]))
    from app.cli.commands import cli

    cli()
