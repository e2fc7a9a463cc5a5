"""The worker's broker and middleware. `conveyor worker` (or `dramatiq app.worker`) starts a worker.

`conveyor worker` of one process loads this module in the process that runs the jobs
(`app.execution.alone`); of more, and `dramatiq app.worker`, in each forked worker process.

This module builds the broker, imports `app.tasks` (which only registers task specs) and
binds every registered task to the broker as an actor. Nothing else builds a broker: the
API and the relay read the same task specs and publish with plain AMQP. Retries, AgeLimit
and Dramatiq's delay queue are left out: the ledger schedules retries and delays, and the
ledger middleware decides what a message does. So are Callbacks, Pipelines and
CurrentMessage: messages are the relay's doorbells, which carry no callbacks or pipes, and a
task sees its job (`JobContext`), not a message; each would cost two hooks per job.
"""

from __future__ import annotations

import dramatiq
from dramatiq.broker import Broker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, ShutdownNotifications, TimeLimit

import app.tasks  # noqa: F401  (registers every task spec)
from app import tracing, transport
from app.execution.actors import bind
from app.execution.consumer import ClaimingBroker
from app.execution.exporter import WorkerExporter
from app.execution.middleware import LedgerMiddleware
from app.execution.queue_types import QueueTypeCheck
from app.jobs.registry import MAX_PRIORITY, all_tasks
from app.logs import configure_logging
from app.settings import get_settings


def build_broker(url: str) -> Broker:
    ledger = LedgerMiddleware()
    middleware: list[Middleware] = [
        TimeLimit(),
        ShutdownNotifications(),
        ledger,
        WorkerExporter(),
    ]
    if tracing.enabled():
        from app.execution.tracing import RunSpans

        middleware.append(RunSpans())
    if url.startswith("stub"):
        return StubBroker(middleware=middleware)
    settings = get_settings()
    if transport.kind(url) == "redis":
        from app.execution.redis_consumer import RedisDoorbellBroker

        return RedisDoorbellBroker(
            url=url, middleware=middleware, claims=ledger, hold_seconds=settings.worker_hold_seconds
        )
    middleware.insert(0, QueueTypeCheck(url, settings.broker_queue_type))
    return ClaimingBroker(
        url=url,
        middleware=middleware,
        claims=ledger,
        max_priority=MAX_PRIORITY,
        heartbeat_seconds=settings.amqp_heartbeat_seconds,
        queue_type=settings.broker_queue_type,
        hold_seconds=settings.worker_hold_seconds,
    )


configure_logging()
tracing.start(tracing.SERVICE_WORKER)
broker = build_broker(get_settings().broker_url)
dramatiq.set_broker(broker)
bind(broker, all_tasks())
