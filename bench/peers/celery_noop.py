"""Celery over RabbitMQ (py-amqp): one noop task, no result backend, Celery's defaults otherwise.

Run as `celery -A peers.celery_noop worker -P threads -c 8` with BENCH_BROKER_URL set.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from peers._marks import mark

QUEUE = "celery"

app = Celery("bench", broker=os.environ["BENCH_BROKER_URL"])
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop(**payload: Any) -> None:
    mark()
