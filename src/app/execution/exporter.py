"""The worker's Prometheus exporter: one port serving the sum over all of a worker's processes.

`dramatiq` forks N worker processes. Each counts in memory-mapped files of its own
(prometheus-client's multiprocess mode) inside a directory that belongs to this worker run,
and one more process, forked by Dramatiq from this middleware's `forks`, serves their sum
on WORKER_METRICS_PORT. WORKER_METRICS_PORT=0 turns the exporter off. A worker of one
process (`app.execution.alone`) runs the same function on a thread of its own instead.

The run's directory is named after the Dramatiq main process (pid and start time), the
parent every worker and fork process shares, or after the lone worker process: several
workers on one machine never mix their counts, and a restarted worker starts from zero.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware
from dramatiq.worker import Worker

from app.logs import configure_logging, get_logger
from app.settings import get_settings

log = get_logger("conveyor.worker.metrics")

RUNS_DIR = Path(tempfile.gettempdir()) / "conveyor-worker-metrics"

_lone: list[int] = []  # the pid of a worker process that is its own main process


def serve_from_this_process() -> None:
    """This process is the worker's main process (no Dramatiq parent): name the run after it."""
    _lone[:] = [os.getpid()]


class WorkerExporter(Middleware):
    """Switches the worker processes to multiprocess metrics and forks the process serving them."""

    def __init__(self) -> None:
        self.directory: Path | None = None

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [serve] if self.directory is not None else []

    def after_process_boot(self, broker: Broker) -> None:
        if get_settings().worker_metrics_port == 0:
            return
        directory = run_directory()
        prepare(directory)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        # prometheus-client picks how values are stored when it is imported, which may have
        # happened before this hook; every worker metric has labels, so no value exists yet
        # and switching the class now puts all of them in the run's files.
        from prometheus_client import values

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        self.directory = directory

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        if self.directory is not None:
            from prometheus_client import multiprocess

            # Live gauges (jobs in progress) drop this process's share.
            multiprocess.mark_process_dead(os.getpid(), str(self.directory))  # type: ignore[no-untyped-call]


def run_directory(main_pid: int | None = None) -> Path:
    """The metrics directory of the worker run whose main process is `main_pid`."""
    pid = main_pid or (_lone[0] if _lone else os.getppid())
    return RUNS_DIR / f"{pid}-{_start_ticks(pid)}"


def prepare(directory: Path) -> None:
    """Create the run's directory and remove those of runs whose main process is gone."""
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    with (RUNS_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        directory.mkdir(exist_ok=True)
        for other in RUNS_DIR.iterdir():
            if other.is_dir() and other != directory and not _run_alive(other.name):
                shutil.rmtree(other, ignore_errors=True)


def serve() -> int:
    """The exporter process: serves the run's metrics until Dramatiq stops it."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    configure_logging()
    settings = get_settings()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(run_directory()))  # type: ignore[no-untyped-call]
    try:
        _, thread = start_http_server(settings.worker_metrics_port, settings.worker_metrics_host, registry)
    except OSError as error:
        # Another worker on this machine holds the port: this one runs on, unexported.
        log.error(
            "worker metrics exporter could not listen; metrics not exported",
            host=settings.worker_metrics_host,
            port=settings.worker_metrics_port,
            error=str(error),
        )
        return 0
    log.info("worker metrics exported", host=settings.worker_metrics_host, port=settings.worker_metrics_port)
    thread.join()
    return 0


def _start_ticks(pid: int) -> str:
    """When the process started (clock ticks since boot): a pid and this name one process ever."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rsplit(")", 1)[1].split()[19]


def _run_alive(name: str) -> bool:
    pid, _, ticks = name.partition("-")
    return pid.isdigit() and _start_ticks(int(pid)) == ticks
