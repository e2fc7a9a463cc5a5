"""The Redis variant, docker-compose.yml with docker-compose.redis.yml over it, in a project of
its own: up, every service healthy, a first key, one email through Redis, `down --volumes`.

It runs in the background right after the main stack is healthy and is down again before the
compose tests start: two stacks at once on 2 cores push `conveyor health` past its timeout.
What it saw is kept for tests/compose/test_compose_redis.py to judge.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from tests.compose.api import Api
from tests.compose.project import FACTS, ComposeProject, Container, redis_services


@dataclass
class RedisVariantRun:
    """What the check saw."""

    password: str
    services: set[str] = field(default_factory=set)
    not_up: list[Container] = field(default_factory=list)
    ready: tuple[int, dict[str, Any]] = (0, {})
    broker_url: str = ""
    post_status: int = 0
    job: dict[str, Any] = field(default_factory=dict)
    epoch_exists: str = ""


def run_redis_variant(project: ComposeProject, scopes: str) -> RedisVariantRun:
    """Check the variant, then bring it down (volumes too) whatever happened."""
    run = RedisVariantRun(password=project.variables["REDIS_PASSWORD"])
    started = time.monotonic()
    try:
        project.up()
        project.wait_up(redis_services(), timeout=600)
        FACTS["redis variant: up -> every service healthy"] = f"{time.monotonic() - started:.0f} s"
        containers = project.containers()
        run.services = {c.service for c in containers}
        run.not_up = [c for c in containers if not c.up and (c.status, c.exit_code) != ("exited", 0)]
        api = Api(project.api_url)
        run.ready = api.ready()
        run.broker_url = project.exec("worker", "sh", "-c", 'echo "$BROKER_URL"').stdout.strip()
        created = project.exec("api", "conveyor", "keys", "create", "compose-redis", "--scopes", scopes)
        assert created.returncode == 0, created.stdout + created.stderr
        api.key = created.stdout.splitlines()[-1]
        subject = f"compose redis {secrets.token_hex(4)}"
        response = api.post("/api/v1/emails", {"to": "ada@example.com", "subject": subject, "body": "Hi"})
        run.post_status = response.status_code
        if response.status_code == 202:
            job_id = str(response.json()["id"])
            run.job = api.wait_for([job_id], timeout=60)[job_id]
        # The relay's marker of the Redis run it saw: the doorbells went through this Redis.
        epoch = project.exec("redis", "redis-cli", "--no-auth-warning", "exists", "conveyor:epoch")
        run.epoch_exists = epoch.stdout.strip()
    finally:
        checked = time.monotonic()
        project.down(volumes=True)
        FACTS["redis variant: down"] = f"{time.monotonic() - checked:.0f} s"
        FACTS["redis variant: up, check, down (in the background)"] = f"{time.monotonic() - started:.0f} s"
    return run
