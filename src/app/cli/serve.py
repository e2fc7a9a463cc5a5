"""The long-running processes: api, worker, relay; and migrate, and dev (all three at once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import Annotated, Any

import typer

from app.cli import mailsink
from app.settings import Settings, get_settings


def api(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the HTTP API (uvicorn)."""
    import uvicorn

    from app.logs import configure_logging

    configure_logging()
    uvicorn.run(
        "app.asgi:create_app", factory=True, host=host, port=port, workers=workers, **server_options()
    )


def server_options(settings: Settings | None = None) -> dict[str, Any]:
    """What `conveyor api` tells uvicorn besides where to listen. X-Forwarded-Proto and -For are
    believed only from FORWARDED_ALLOW_IPS (the proxies in front): from anyone else, a header
    saying https would make a plain-http session cookie look like a Secure one."""
    settings = settings or get_settings()
    return {
        "log_config": None,
        "access_log": False,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "server_header": False,
    }


def worker(
    processes: Annotated[int | None, typer.Option(help="Worker processes")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads per process")] = None,
    queues: Annotated[list[str] | None, typer.Option("--queue", "-Q", help="Only these queues")] = None,
) -> None:
    """Run a Dramatiq worker (the same as `dramatiq app.worker`)."""
    settings = get_settings()
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    argv = [
        "app.worker",
        "--processes",
        str(processes or settings.worker_processes),
        "--threads",
        str(threads or settings.worker_threads),
        "--worker-shutdown-timeout",
        str(int(settings.worker_shutdown_seconds * 1000)),
        "--skip-logging",
    ]
    if queues:
        argv += ["--queues", *queues]
    _check_queue_types(settings, queues)
    sys.exit(dramatiq_main(make_argument_parser().parse_args(argv)))  # type: ignore[no-untyped-call]


def _check_queue_types(settings: Settings, queues: list[str] | None) -> None:
    """Stop before any worker process starts when a queue has the other type than
    BROKER_QUEUE_TYPE's: one error, exit code 78 (each process checks too, for `dramatiq`)."""
    from app import transport

    if transport.kind(settings.broker_url) != "rabbitmq":
        return
    from app.cli._common import task_queues
    from app.execution.queue_types import find_mismatch, stop
    from app.logs import configure_logging

    mismatch = find_mismatch(settings.broker_url, settings.broker_queue_type, queues or task_queues())
    if mismatch is not None:
        configure_logging()
        stop(mismatch)


def relay() -> None:
    """Publish committed jobs from the ledger to RabbitMQ (the outbox relay), fire schedules, prune,
    deliver webhooks."""
    import app.tasks  # noqa: F401  (registers the tasks, and the schedules they declare)
    from app import tracing
    from app.logs import configure_logging, get_logger
    from app.relay.outbox import Relay
    from app.webhooks.dispatch import Dispatcher

    configure_logging()
    tracing.start(tracing.SERVICE_RELAY)
    settings = get_settings()
    if settings.relay_metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.relay_metrics_port, settings.relay_metrics_host)
        except OSError as error:  # another relay on this machine holds the port: run on, unexported
            get_logger("conveyor.relay").error(
                "relay metrics exporter could not listen; metrics not exported",
                port=settings.relay_metrics_port,
                error=str(error),
            )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    webhooks = Dispatcher(settings)
    webhooks.start(stop)  # beside the relay's loop, never in it: a slow receiver delays no job
    Relay().run(stop)
    webhooks.join()


def migrate() -> None:
    """Create the database if needed and apply the ledger's migrations."""
    from app.ledger.migrate import upgrade

    upgrade()
    typer.echo("database migrated")


def dev(
    host: Annotated[str, typer.Option(help="Interface the API binds")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the API binds")] = 8000,
) -> None:
    """Migrate, then run api, relay and worker together until Ctrl-C; prints a development key."""
    migrate()
    key = _development_key()
    settings = get_settings()
    sink, mail = None, f"{settings.smtp_host}:{settings.smtp_port}"
    if not mailsink.listening(settings.smtp_host, settings.smtp_port):
        sink = mailsink.start(settings.smtp_host, settings.smtp_port)
        mail += (
            " (a development sink: mails are printed here)"
            if sink
            else " (nothing listens: emails will retry)"
        )
    exe = [sys.executable, "-m", "app"]
    commands = {
        "api": [*exe, "api", "--host", host, "--port", str(port)],
        "relay": [*exe, "relay"],
        "worker": [*exe, "worker"],
    }
    children = {name: subprocess.Popen(cmd) for name, cmd in commands.items()}
    # SIGTERM (a supervisor, `kill`) stops the children too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    base = f"http://{host}:{port}"
    typer.echo(
        "\nConveyor is running:\n"
        f"  API          {base}/api/v1/jobs\n"
        f"  API docs     {base}/docs\n"
        f"  dashboard    {base}/dashboard\n"
        f"  health       {base}/health/ready\n"
        f"  metrics      {base}/metrics (worker: http://127.0.0.1:{settings.worker_metrics_port}/metrics)\n"
        f"  SMTP         {mail}\n"
        f"  key          {key}\n"
        "               (every scope, for this machine only; sign in to the dashboard with it, or\n"
        f"               export CONVEYOR_KEY={key} and send Authorization: Bearer $CONVEYOR_KEY)\n"
        "Press Ctrl-C to stop.\n"
    )
    try:
        while all(child.poll() is None for child in children.values()):
            time.sleep(0.5)
        dead = [name for name, child in children.items() if child.poll() is not None]
        typer.echo(f"{', '.join(dead)} exited; stopping the others", err=True)
    except KeyboardInterrupt:
        pass
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(timeout=40)
            except subprocess.TimeoutExpired:
                child.kill()
        if sink is not None:
            sink.stop()


def _development_key() -> str:
    """A new key with every scope, named after this start (`conveyor keys list` shows them)."""
    from app.access import keys
    from app.ledger.engines import sync_engine
    from app.operate import audit

    name = f"development-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    with sync_engine().begin() as conn:
        token = keys.create(conn, name, set(keys.Scope))
        detail = {"scopes": sorted(keys.Scope), "by": "conveyor dev"}
        audit.record_sync(conn, audit.cli_actor(), audit.Action.KEY_CREATE, target=name, detail=detail)
        return token


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def register(cli: typer.Typer) -> None:
    for command in (api, worker, relay, migrate, dev):
        cli.command()(command)
