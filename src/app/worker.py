"""The broker and its middleware. `dramatiq app.worker` (or `conveyor worker`) starts a worker.

The broker is created and set here before any task module is imported, so every actor
is declared on it. Retries, AgeLimit and Dramatiq's delay queue are left out: the ledger
schedules retries and delays, and the ledger middleware decides what a message does.
"""

from __future__ import annotations

import dramatiq
from dramatiq.broker import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from app.logs import configure_logging
from app.settings import get_settings
from app.worker_exporter import WorkerExporter
from app.worker_middleware import LedgerMiddleware

# RabbitMQ priority queues must be declared with their maximum up front; 0-9 like the API.
MAX_PRIORITY = 9


def build_broker(url: str) -> Broker:
    middleware: list[Middleware] = [
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        CurrentMessage(),
        LedgerMiddleware(),
        WorkerExporter(),
    ]
    if url.startswith("stub"):
        return StubBroker(middleware=middleware)
    return RabbitmqBroker(url=url, confirm_delivery=True, max_priority=MAX_PRIORITY, middleware=middleware)


configure_logging()
broker = build_broker(get_settings().broker_url)
dramatiq.set_broker(broker)

import app.tasks  # noqa: E402,F401  (registers every actor on the broker above)
