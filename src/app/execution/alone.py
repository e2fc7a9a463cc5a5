"""One worker process on its own: `conveyor worker` with one process runs the jobs itself.

`dramatiq app.worker` starts a main process that forks the worker processes, and then one
more process for the metrics exporter. With one worker process that made three Python
processes, two of them idle, each holding its own pages of what it had imported (221 MiB
of RSS together after a 10,000-job drain, against 77 MiB for the process running the jobs).
Here the launching process is the worker: it loads the broker module, runs the worker's
threads, and runs the middleware's fork functions (the exporter) on threads of its own.

It stops as a Dramatiq worker process does: the first SIGTERM, SIGINT or SIGHUP finishes
the running jobs (for up to the shutdown timeout) and exits 0, a later one exits at once
with 1; a repeat within a moment of the first is the same stop (`shutdown`). SIGHUP then
starts the same command again, as Dramatiq's main process does. Exit codes are Dramatiq's:
2 when the broker module fails to import, 3 when the broker cannot be reached at start.
A process that dies (a job that ends it, SIGKILL) is restarted by its supervisor, as before.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
from types import FrameType

import dramatiq
from dramatiq.broker import Broker
from dramatiq.errors import ConnectionError as BrokerConnectionError

from app.execution import exporter
from app.logs import get_logger

log = get_logger("conveyor.worker")

# dramatiq.cli's exit codes: a supervisor reads the same from either way of running.
RET_OK, RET_KILLED, RET_IMPORT, RET_CONNECT = 0, 1, 2, 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
POLL_SECONDS = 0.5


def run(broker_module: str, threads: int, queues: list[str] | None, shutdown_seconds: float) -> int:
    """Run a worker of `threads` threads in this process until a stop signal; its exit code."""
    stopping: list[int] = []  # the signal that asked for the stop

    def on_stop(signum: int, frame: FrameType | None) -> None:
        if stopping:
            sys.exit(RET_KILLED)
        stopping.append(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop)
    exporter.serve_from_this_process()
    try:
        broker = load_broker(broker_module)
        broker.emit_after("process_boot")
        # The ledger middleware has wrapped SIGTERM's handler (a repeat is the same stop);
        # the other stop signals take the same wrapped handler.
        for signum in STOP_SIGNALS[1:]:
            signal.signal(signum, signal.getsignal(signal.SIGTERM))
        worker = dramatiq.Worker(broker, queues=set(queues) if queues else None, worker_threads=threads)
        worker.start()
    except ImportError:
        log.exception("the worker's broker module failed to import", module=broker_module)
        return RET_IMPORT
    except BrokerConnectionError:
        log.exception("the broker could not be reached")
        return RET_CONNECT
    for middleware in broker.middleware:
        for fork in middleware.forks:
            threading.Thread(target=fork, name=fork.__name__, daemon=True).start()
    while not stopping:
        time.sleep(POLL_SECONDS)
    worker.stop(timeout=int(shutdown_seconds * 1000))
    broker.close()
    if stopping[0] == signal.SIGHUP:
        os.execv(sys.executable, sys.orig_argv)
    return RET_OK


def load_broker(module_name: str) -> Broker:
    """The broker a module sets up, found as `dramatiq <module>` finds it."""
    module = importlib.import_module(module_name)
    broker = getattr(module, "broker", None)
    return broker if isinstance(broker, Broker) else dramatiq.get_broker()
