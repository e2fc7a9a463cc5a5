"""`conveyor worker`, started without the rest of the CLI: what the worker process imports.

`conveyor` reaches here before it imports the operating commands (typer, rich, their
queries and views): a worker of one process runs its jobs in the launching process
(`app.execution.alone`); for more than one, the process becomes Dramatiq's main process,
which forks its worker and exporter processes from a process holding nothing else. `conveyor worker --help` is
answered by the full CLI, whose `worker` command calls `start` too.
"""

from __future__ import annotations

import argparse
import os
import sys

BROKER_MODULE = "app.worker"


def main(argv: list[str]) -> int:
    """Parse `conveyor worker`'s options (those of `app.cli.serve.worker`) and run it."""
    parser = argparse.ArgumentParser(prog="conveyor worker", add_help=False)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--queue", "-Q", dest="queues", action="append", default=None)
    args = parser.parse_args(argv)
    return start(args.processes, args.threads, args.queues)


def start(processes: int | None, threads: int | None, queues: list[str] | None) -> int:
    """Run the worker: here for one process, under Dramatiq's main process for more."""
    from app.settings import get_settings

    settings = get_settings()
    processes = processes or settings.worker_processes
    threads = threads or settings.worker_threads
    if processes == 1:
        from app.execution import alone

        return alone.run(BROKER_MODULE, threads, queues, settings.worker_shutdown_seconds)
    args = [
        BROKER_MODULE,
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--worker-shutdown-timeout",
        str(int(settings.worker_shutdown_seconds * 1000)),
        "--skip-logging",
    ]
    if queues:
        args += ["--queues", *queues]
    _check_queue_types(settings.broker_url, settings.broker_queue_type, queues)
    # Dramatiq's main process forks the worker processes and the exporter from itself: it
    # becomes `python -m dramatiq` (the same pid, so signals and supervisors see no change)
    # and holds nothing of what this process imported to read the settings.
    os.execv(sys.executable, [sys.executable, "-m", "dramatiq", *args])


def _check_queue_types(broker_url: str, queue_type: str, queues: list[str] | None) -> None:
    """Stop before any worker process starts when a queue has the other type than
    BROKER_QUEUE_TYPE's: one error, exit code 78, whatever the number of processes (each checks
    too, for `dramatiq app.worker`; one process alone checks as it boots)."""
    from app import transport

    if transport.kind(broker_url) != "rabbitmq":
        return
    from app.cli._common import task_queues
    from app.execution.queue_types import find_mismatch, stop
    from app.logs import configure_logging

    mismatch = find_mismatch(broker_url, queue_type, queues or task_queues())
    if mismatch is not None:
        configure_logging()
        stop(mismatch)
