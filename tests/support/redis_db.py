"""A Redis database number of this test run's own on the shared Redis (127.0.0.1:6379).

The first of db 1-15 whose owner key this run can set is taken; only that db is flushed, at the
end. Nothing else on the shared server is touched (no FLUSHALL, no restart).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from app.transport import redis as redis_transport
from tests.support.stack import Stack

REDIS_HOSTPORT = ("127.0.0.1", 6379)
OWNER_KEY = "conveyor:test-owner"


def redis_problem() -> str | None:
    try:
        redis.Redis(*REDIS_HOSTPORT, socket_connect_timeout=3, socket_timeout=3).ping()
        return None
    except redis.RedisError as error:
        return f"Redis on {REDIS_HOSTPORT[0]}:{REDIS_HOSTPORT[1]}: {error}"


def claim_db() -> int:
    """A db number no other run holds; its owner key marks it this run's."""
    owner = f"{os.getpid()}:{secrets.token_hex(4)}"
    for db in range(1, 16):
        if redis.Redis(*REDIS_HOSTPORT, db=db).set(OWNER_KEY, owner, nx=True, ex=3600):
            return db
    raise RuntimeError("every Redis db 1-15 is held by another test run")


def url(db: int, port: int = REDIS_HOSTPORT[1]) -> str:
    """This db's URL; through a proxy on loopback when `port` names one."""
    return f"redis://{REDIS_HOSTPORT[0]}:{port}/{db}"


def release_db(db: int) -> None:
    redis.Redis(*REDIS_HOSTPORT, db=db).flushdb()


def empty_db(db: int) -> None:
    """Everything but the owner key goes."""
    connection = redis.Redis(*REDIS_HOSTPORT, db=db)
    owner = connection.get(OWNER_KEY)
    connection.flushdb()
    if owner is not None:
        connection.set(OWNER_KEY, owner, ex=3600)


@contextmanager
def stack_on(
    db: int, workdir: Path, env: dict[str, str], *, port: int = REDIS_HOSTPORT[1]
) -> Iterator[Stack]:
    """api + relay with BROKER_URL on this db (through `port`, a proxy's, when given); each test
    starts its own workers. The relay's first look at an empty Redis marks it (and would publish
    again what was published before): it is waited for, so each test starts from one Redis run
    the relay knows."""
    running = Stack(workdir=workdir, env={**env, "BROKER_URL": url(db, port)}, diagnostics_over_http=True)
    try:
        running.start_api()
        running.start_relay()
        running.wait_api()
        marker = redis.Redis(*REDIS_HOSTPORT, db=db)
        deadline = time.monotonic() + 30
        while not marker.exists(redis_transport.EPOCH_KEY) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(redis_transport.EPOCH_KEY), running.logs()
        yield running
    finally:
        running.stop()
