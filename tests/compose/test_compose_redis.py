"""The Redis variant, `docker-compose.yml` with `docker-compose.redis.yml` over it: checked in a
project of its own in the background once the main stack is healthy, and down again before
the main stack's tests (tests/compose/redis_variant.py); this test judges what it saw."""

from __future__ import annotations

import pytest

from tests.compose.engine import in_ci, why_no_engine
from tests.compose.project import redis_services
from tests.compose.redis_variant import RedisVariantRun

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1500)]

if not in_ci() and (reason := why_no_engine()):
    pytest.skip(f"compose tests need a Docker engine: {reason}", allow_module_level=True)


def test_the_redis_variant_runs_without_rabbitmq_and_an_email_posted_to_it_succeeds(
    redis_run: RedisVariantRun,
) -> None:
    assert redis_run.services == redis_services()  # `redis` in, `rabbitmq` out
    assert redis_run.not_up == []
    status, body = redis_run.ready
    assert status == 200, body
    assert body["checks"]["broker"]["ok"] is True, body
    assert redis_run.broker_url == f"redis://:{redis_run.password}@redis:6379/0"
    assert redis_run.post_status == 202
    assert redis_run.job["state"] == "succeeded", redis_run.job
    assert redis_run.epoch_exists == "1"  # the relay's marker: the doorbells went through Redis
