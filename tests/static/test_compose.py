"""docker-compose.yml, checked without a Docker engine: schema, commands, health, wiring, config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from app.settings import Settings
from tests.static.shipping import (
    APP_SERVICES,
    REPO,
    argv,
    compose,
    compose_schema,
    healthcheck_argv,
    options_of,
    parse_conveyor,
    service,
)
from tests.support.stack import Process, Stack

pytestmark = pytest.mark.static

REQUIRED_SERVICES = {"postgres", "rabbitmq", "mailpit", "migrate", "api", "relay", "worker"}
MONITORING_SERVICES = {"prometheus", "grafana"}
CREDENTIAL = re.compile(r"PASSWORD|PASS$|SECRET|TOKEN|_KEY$", re.IGNORECASE)
INTERPOLATED = r"\$\{[^}]+\}"
USERINFO_FROM_ENVIRONMENT = re.compile(rf"{INTERPOLATED}(?::{INTERPOLATED})?")


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft201909Validator(compose_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    assert schema_errors(compose()) == []


def test_the_schema_check_rejects_a_misspelt_key() -> None:
    document = compose()
    document["services"]["api"]["healthcheck"]["intervall"] = "5s"
    assert any("intervall" in error for error in schema_errors(document))


def test_every_required_service_is_defined_and_monitoring_only_runs_in_its_profile() -> None:
    services = compose()["services"]
    assert set(services) == REQUIRED_SERVICES | MONITORING_SERVICES
    for name in MONITORING_SERVICES:
        assert services[name].get("profiles") == ["monitoring"], name
    for name in REQUIRED_SERVICES:
        assert "profiles" not in services[name], f"{name} must start with a plain `docker compose up`"


def test_the_app_services_run_one_image_built_from_this_repository() -> None:
    images = {service(name)["image"] for name in APP_SERVICES}
    assert len(images) == 1, images
    builders = [name for name in APP_SERVICES if "build" in service(name)]
    assert builders == ["migrate"], "one service builds the image; compose v1 builds once per `build:`"
    assert service("migrate")["build"] == {"context": ".", "target": "runtime"}


def test_every_other_app_service_starts_after_the_one_that_builds_the_image() -> None:
    # Compose v1 makes sure of images in dependency order: the image exists before it is needed.
    for name in set(APP_SERVICES) - {"migrate"}:
        assert "migrate" in service(name)["depends_on"], name


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_app_service_runs_under_an_init_so_sigterm_stops_it_even_while_it_starts(name: str) -> None:
    assert service(name)["init"] is True


# The API guards itself with keys; the admin UIs have no key of Conveyor's in front of them.
API_PUBLISHED = {"api"}
ADMIN_PUBLISHED = {"mailpit", "rabbitmq", "prometheus", "grafana"}


def published(name: str) -> list[str]:
    return [str(port) for port in compose()["services"][name].get("ports", [])]


def test_the_api_is_published_on_publish_address_and_the_admin_uis_on_admin_publish_address() -> None:
    with_ports = {name for name in compose()["services"] if published(name)}
    assert with_ports == API_PUBLISHED | ADMIN_PUBLISHED
    for name in API_PUBLISHED:
        for port in published(name):
            assert port.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:"), f"{name}: {port}"
    for name in ADMIN_PUBLISHED:
        for port in published(name):
            assert port.startswith("${ADMIN_PUBLISH_ADDRESS:-127.0.0.1}:"), f"{name}: {port}"


def test_no_named_volume_belongs_to_a_profile_only_service() -> None:
    # Compose v1 creates every declared volume on `up`, also those of services it does not start.
    profiled = [spec for spec in compose()["services"].values() if spec.get("profiles")]
    declared = set(compose()["volumes"])
    for spec in profiled:
        sources = {str(volume).split(":")[0] for volume in spec.get("volumes", [])}
        assert not sources & declared, sources & declared


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_app_service_runs_a_real_conveyor_subcommand(name: str) -> None:
    parse_conveyor(argv(service(name)["command"]))


def test_the_api_listens_on_every_interface_at_the_published_port() -> None:
    options = parse_conveyor(argv(service("api")["command"]))
    assert options["host"] == "0.0.0.0"
    assert any(port.endswith(f":{options['port']}") for port in service("api")["ports"])


def _stack_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The argv the end-to-end stack starts for each process, recorded instead of run."""
    monkeypatch.setattr(Process, "start", lambda self: self)
    stack = Stack(workdir=tmp_path, env={})
    stack.start_api()
    stack.start_relay()
    stack.start_worker()
    return {name: process.argv for name, process in stack.processes.items()}


@pytest.mark.parametrize("name", ["api", "relay", "worker"])
def test_compose_runs_the_same_command_the_end_to_end_tests_start(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tested = _stack_argv(tmp_path, monkeypatch)[name]
    shipped = argv(service(name)["command"])
    assert Path(tested[0]).name == shipped[0] == "conveyor"
    assert tested[1] == shipped[1]
    # Values differ (ports, process counts); every option compose relies on is one the tests use.
    assert set(options_of(shipped)) <= set(options_of(tested)), (shipped, tested)
    parse_conveyor(["conveyor", *tested[1:]])


def test_api_worker_postgres_and_rabbitmq_have_healthchecks() -> None:
    for name in ("api", "worker", "postgres", "rabbitmq"):
        check = service(name)["healthcheck"]
        assert not check.get("disable"), name
        assert healthcheck_argv(check["test"]), name


@pytest.mark.parametrize("name", ["api", "worker"])
def test_the_app_healthchecks_are_real_conveyor_commands(name: str) -> None:
    parse_conveyor(healthcheck_argv(service(name)["healthcheck"]["test"]))


def test_the_worker_healthcheck_asks_about_the_worker() -> None:
    options = parse_conveyor(healthcheck_argv(service("worker")["healthcheck"]["test"]))
    assert str(options["component"]).rsplit(".", 1)[-1].lower() == "worker"


def test_processes_wait_for_the_migration_and_a_healthy_broker_and_the_migration_for_postgres() -> None:
    assert service("migrate")["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "relay", "worker"):
        depends = service(name)["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["rabbitmq"] == {"condition": "service_healthy"}, name
    assert service("migrate")["restart"] == "no"


def test_the_worker_can_be_scaled_out() -> None:
    worker = service("worker")
    assert "container_name" not in worker
    assert "ports" not in worker, "a fixed host port would clash between replicas"
    assert "hostname" not in worker, "the health check tells replicas apart by hostname"


def _environment(name: str) -> dict[str, str]:
    environment = service(name).get("environment", {})
    assert isinstance(environment, dict), f"{name}: environment as a mapping"
    return {str(k): str(v) for k, v in environment.items()}


def test_the_app_is_configured_only_through_settings_that_exist() -> None:
    known = {name.upper() for name in Settings.model_fields}
    for name in APP_SERVICES:
        environment = _environment(name)
        assert set(environment) <= known, f"{name}: not settings: {set(environment) - known}"
        assert "env_file" not in service(name)
    environment = _environment("worker")
    for required in ("DATABASE_URL", "BROKER_URL", "SMTP_HOST", "SMTP_PORT", "LOG_FORMAT"):
        assert required in environment
    assert environment["LOG_FORMAT"] == "json"


def test_the_api_and_worker_send_mail_to_mailpit_unless_smtp_host_says_otherwise() -> None:
    for name in ("api", "worker"):
        environment = _environment(name)
        assert (environment["SMTP_HOST"], environment["SMTP_PORT"]) == (
            "${SMTP_HOST:-mailpit}",
            "${SMTP_PORT:-1025}",
        )
        assert environment["SMTP_FROM"].startswith("${SMTP_FROM:-")


def test_grafanas_admin_password_comes_from_the_environment() -> None:
    environment = service("grafana")["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:-")


def test_the_worker_metrics_port_is_the_one_prometheus_scrapes() -> None:
    assert _environment("worker")["WORKER_METRICS_PORT"] == "9191"
    assert _environment("worker")["WORKER_METRICS_HOST"] == "0.0.0.0", "reachable from Prometheus"
    assert "9191" in [str(port) for port in service("worker")["expose"]]


def test_no_credential_is_written_into_the_compose_file() -> None:
    for name, definition in compose()["services"].items():
        for key, value in (definition.get("environment") or {}).items():
            if CREDENTIAL.search(key):
                assert str(value).startswith("${"), f"{name}.{key} must come from the environment"
            if "://" in str(value) and "@" in str(value):
                userinfo = str(value).split("://", 1)[1].rsplit("@", 1)[0]
                assert USERINFO_FROM_ENVIRONMENT.fullmatch(userinfo), f"{name}.{key}: {userinfo}"


def test_state_lives_in_named_volumes() -> None:
    declared = set(compose()["volumes"])
    for name, path in (("postgres", "/var/lib/postgresql/data"), ("rabbitmq", "/var/lib/rabbitmq")):
        volumes = [str(v) for v in service(name)["volumes"]]
        assert any(v.endswith(f":{path}") and v.split(":")[0] in declared for v in volumes), name


def test_every_file_compose_mounts_is_in_the_repository() -> None:
    for name, definition in compose()["services"].items():
        for volume in definition.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
