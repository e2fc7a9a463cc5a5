"""Redis doorbells: the relay's publishing rate and a consumer's take+ack rate, one run.

    .venv/bin/python bench/redis_doorbells.py                    # 20,000 doorbells, batches of 500
    .venv/bin/python bench/redis_doorbells.py --messages 50000 --burst 256

Times the code of `app.transport.redis` against a db number of its own on the shared Redis
(127.0.0.1:6379; the first of 1-15 free, emptied after, nothing else touched): `RedisPublisher`
(one MULTI/EXEC per batch) and `Doorbells` (the consumer's Lua take, then the ack a claim
sends). No ledger: the broker's side alone.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dramatiq import Message  # noqa: E402
from tests.support import redis_db  # noqa: E402

from app.transport import redis as redis_transport  # noqa: E402


def doorbell() -> Message[None]:
    options = {"job_id": str(uuid.uuid4()), "run": 1}
    return Message(
        queue_name="bench", actor_name="app.tasks.example.echo", args=(), kwargs={}, options=options
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--burst", type=int, default=256)
    args = parser.parse_args()
    db = redis_db.claim_db()
    try:
        url = redis_db.url(db)
        messages = [(doorbell(), i % 10) for i in range(args.messages)]
        publisher = redis_transport.RedisPublisher(url)
        started = time.perf_counter()
        for start in range(0, len(messages), args.batch):
            publisher.publish(messages[start : start + args.batch])
        published = time.perf_counter() - started
        bells = redis_transport.Doorbells(url, "bench", "bench:1:x:bench", wait=0.1)
        taken = 0
        started = time.perf_counter()
        while batch := bells.take(args.burst, wait=0.0):
            bells.ack([redis_id for redis_id, _ in batch])
            taken += len(batch)
        drained = time.perf_counter() - started
        bells.close()
        publisher.close()
        print(f"published {len(messages)} in batches of {args.batch}: {len(messages) / published:,.0f}/s")
        print(f"took+acked {taken} in bursts of {args.burst}: {taken / drained:,.0f}/s")
    finally:
        redis_db.release_db(db)


if __name__ == "__main__":
    main()
