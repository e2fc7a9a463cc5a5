"""docker-compose.redis.yml, checked without a Docker engine: what it changes over docker-compose.yml."""

from __future__ import annotations

import re
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from tests.static.shipping import APP_SERVICES, REPO, compose_schema

pytestmark = pytest.mark.static

OVERRIDE = REPO / "docker-compose.redis.yml"
REDIS_URL = re.compile(r"redis://:\$\{REDIS_PASSWORD:-[^}]*\}@redis:6379/0")


def override() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(OVERRIDE.read_text())
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = override()["services"]
    return found


def test_the_override_is_valid_against_the_compose_specification() -> None:
    validator = jsonschema.Draft201909Validator(compose_schema())
    assert [error.message for error in validator.iter_errors(override())] == []


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_app_service_gets_the_redis_url_with_its_password_from_the_environment(name: str) -> None:
    assert REDIS_URL.fullmatch(services()[name]["environment"]["BROKER_URL"])


@pytest.mark.parametrize("name", sorted(set(APP_SERVICES) - {"migrate"}))
def test_the_processes_wait_for_a_healthy_redis(name: str) -> None:
    assert services()[name]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_rabbitmq_is_scaled_to_zero_and_needs_no_image_of_its_own() -> None:
    # docker-compose.yml makes the app wait for it: an override cannot take a dependency away.
    rabbitmq = services()["rabbitmq"]
    assert rabbitmq["scale"] == 0
    assert rabbitmq["image"] == services()["redis"]["image"]


def test_redis_has_a_healthcheck_a_password_a_volume_and_never_evicts() -> None:
    redis = services()["redis"]
    command = [str(part) for part in redis["command"]]
    assert command[0] == "redis-server"
    assert command[command.index("--requirepass") + 1] == "${REDIS_PASSWORD:-conveyor}"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert redis["environment"]["REDISCLI_AUTH"] == "${REDIS_PASSWORD:-conveyor}"
    assert "redis-data:/data" in redis["volumes"]
    assert "redis-data" in override()["volumes"]


def test_the_offline_images_build_the_redis_image_the_override_names() -> None:
    build = (REPO / "deploy" / "offline-images" / "build.sh").read_text()
    assert f"redis) echo {services()['redis']['image']} ;;" in build
    assert (REPO / "deploy" / "offline-images" / "redis" / "Dockerfile").exists()
