"""A worker whose queues exist with another type than BROKER_QUEUE_TYPE's stops at its start.

Left to Dramatiq, each consumer thread would fail to declare its queue, log a critical error
and try again every few seconds, for ever. Before the consumers start, this checks the type of
every queue the worker will consume (and its .DQ and .XQ); on a mismatch it logs one error
naming the queues, the type they have, the setting and the command that migrates them, and
the worker process exits with EXIT_QUEUE_TYPE, which `dramatiq` (and `conveyor worker`) exits
with too, so a process manager sees a configuration error rather than a crash to restart.
`conveyor worker` checks once before it starts the worker processes, so the error is logged
once whatever their number. A broker that cannot be reached is left to the consumers, which
wait for it as always.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware
from dramatiq.worker import Worker

from app import transport
from app.errors import QueueTypeMismatch
from app.logs import get_logger

log = get_logger("conveyor.worker")

# sysexits.h's EX_CONFIG: systemd's RestartPreventExitStatus= and supervisors can tell it apart.
EXIT_QUEUE_TYPE = 78


class QueueTypeCheck(Middleware):
    """Stops the worker process before its consumers start when a queue has the other type."""

    def __init__(self, broker_url: str, queue_type: str) -> None:
        self.broker_url = broker_url
        self.queue_type = queue_type

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        queues = worker.consumer_whitelist or broker.get_declared_queues()
        mismatch = find_mismatch(self.broker_url, self.queue_type, queues)
        if mismatch is not None:
            stop(mismatch)


def find_mismatch(broker_url: str, queue_type: str, queues: Iterable[str]) -> QueueTypeMismatch | None:
    """The queues (of `queues`, with their .DQ and .XQ) of the other type, as one error; None when
    there are none, or when the broker cannot be reached (the consumers wait for it) or refuses
    the check for another reason (the consumers meet it as they did before the check)."""
    try:
        return transport.type_mismatch(broker_url, queues, queue_type)
    except Exception as error:  # unreachable, or refused for another reason: as before the check
        log.debug("queue types not checked", error=repr(error))
        return None


def stop(mismatch: QueueTypeMismatch) -> NoReturn:
    """One critical line, then exit with EXIT_QUEUE_TYPE. SystemExit passes Dramatiq's hook
    runner (which logs an Exception and goes on) and ends the worker process with this code."""
    log.critical(f"worker stopped: {mismatch}", queue=mismatch.queue, exit_code=EXIT_QUEUE_TYPE)
    raise SystemExit(EXIT_QUEUE_TYPE)
