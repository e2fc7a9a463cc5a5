"""Raw Dramatiq: a RabbitmqBroker with Dramatiq's default middleware and one noop actor.

Run as `dramatiq peers.dramatiq_noop --processes 1 --threads 8` with BENCH_BROKER_URL set.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from peers._marks import mark

QUEUE = "default"

broker = RabbitmqBroker(url=os.environ["BENCH_BROKER_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench.noop", queue_name=QUEUE)
def noop(**payload: Any) -> None:
    mark()
