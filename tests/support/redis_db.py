"""A Redis database number of this test run's own on the shared Redis (127.0.0.1:6379).

The first of db 1-15 whose owner key this run can set is taken; only that db is flushed, at the
end. Nothing else on the shared server is touched (no FLUSHALL, no restart).
"""

from __future__ import annotations

import os
import secrets

import redis

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


def url(db: int) -> str:
    return f"redis://{REDIS_HOSTPORT[0]}:{REDIS_HOSTPORT[1]}/{db}"


def release_db(db: int) -> None:
    redis.Redis(*REDIS_HOSTPORT, db=db).flushdb()


def empty_db(db: int) -> None:
    """Everything but the owner key goes."""
    connection = redis.Redis(*REDIS_HOSTPORT, db=db)
    owner = connection.get(OWNER_KEY)
    connection.flushdb()
    if owner is not None:
        connection.set(OWNER_KEY, owner, ex=3600)
