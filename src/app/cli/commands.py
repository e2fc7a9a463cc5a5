"""Every `conveyor` command (`app.cli.main` runs `cli`).

The operating commands read and write the ledger directly, through the same code as the
API (`app.operate`, `app.accept`), so they keep working while the API is down. Every
listing takes `--json` for scripts.
"""

from __future__ import annotations

import typer

from app.cli import (
    audit,
    dlq,
    enqueue,
    health,
    jobs,
    keys,
    load,
    queues,
    schedules,
    serve,
    status,
    webhooks,
    workflows,
)

cli = typer.Typer(
    name="conveyor",
    help="Conveyor: background jobs you can trust.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
serve.register(cli)
load.register(cli)
cli.command()(health.health)
cli.add_typer(jobs.app, name="jobs")
cli.add_typer(dlq.app, name="dlq")
cli.add_typer(keys.app, name="keys")
cli.add_typer(schedules.app, name="schedules")
cli.add_typer(queues.app, name="queues")
cli.add_typer(webhooks.app, name="webhooks")
cli.add_typer(workflows.app, name="workflows")
cli.command()(schedules.prune)
cli.command()(enqueue.enqueue)
cli.command()(status.workers)
cli.command()(status.stats)
cli.command("audit")(audit.audit_log)
