"""Pre-enqueue N noop messages for a peer: `python -m peers.preload dramatiq|celery N`.

Run in a process of its own, with BENCH_BROKER_URL naming the benchmark's vhost.
"""

from __future__ import annotations

import sys

PAYLOAD = {"message": "bench"}


def dramatiq(n: int) -> None:
    from peers.dramatiq_noop import broker, noop

    for _ in range(n):
        noop.send(**PAYLOAD)
    broker.close()


def celery(n: int) -> None:
    from peers.celery_noop import app, noop

    with app.producer_or_acquire() as producer:
        for _ in range(n):
            noop.apply_async(kwargs=PAYLOAD, producer=producer)


if __name__ == "__main__":
    which, count = sys.argv[1], int(sys.argv[2])
    {"dramatiq": dramatiq, "celery": celery}[which](count)
