"""One compose project of the test run's own: its variables, its commands, its containers.

Every command goes through the compose CLI (v1 or v2) with a project name, an env file and
an environment of this module's making, so neither the developer's `.env` nor the test
run's own settings leak into the containers.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.compose.api import Api
from tests.compose.engine import REPO, Engine, docker_env
from tests.support.infra import free_port

COMPOSE_FILE = REPO / "docker-compose.yml"
# The Redis variant: docker-compose.yml with this override over it.
REDIS_FILES = (COMPOSE_FILE, REPO / "docker-compose.redis.yml")
# Projects are named after the test run's pid, so a later run can tell an abandoned one.
PROJECT_PREFIX = "conveyor-compose-test-"
PROJECT_LABEL = "com.docker.compose.project"
# The app image gets a tag of the tests' own, so a developer's `conveyor:dev` stays as it was.
APP_IMAGE = "conveyor:compose-test"
COMMAND_TIMEOUT_SECONDS = 300
# What this run measured (durations, sizes), printed at the end of the test run.
FACTS: dict[str, str] = {}
ONE_SHOT = "migrate"


@dataclass(frozen=True)
class Container:
    """One container of the project, as `docker inspect` sees it."""

    id: str
    service: str
    status: str  # created, running, exited, ...
    health: str | None  # starting, healthy, unhealthy; None without a healthcheck
    exit_code: int
    started_at: str

    @classmethod
    def from_inspect(cls, data: dict[str, Any]) -> Container:
        state = data["State"]
        health = state.get("Health")
        return cls(
            id=data["Id"][:12],
            service=data["Config"]["Labels"]["com.docker.compose.service"],
            status=state["Status"],
            health=health["Status"] if health else None,
            exit_code=int(state["ExitCode"]),
            started_at=state["StartedAt"],
        )

    @property
    def up(self) -> bool:
        """Running, and healthy if it has a healthcheck."""
        return self.status == "running" and self.health in (None, "healthy")


def compose_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def default_services() -> dict[str, dict[str, Any]]:
    """The services a plain `docker compose up` starts (no profile)."""
    return {name: spec for name, spec in compose_file()["services"].items() if not spec.get("profiles")}


def redis_services() -> set[str]:
    """What the Redis variant runs: the default services with `redis` in place of `rabbitmq`."""
    return (set(default_services()) - {"rabbitmq"}) | {"redis"}


def declares_healthcheck(spec: dict[str, Any]) -> bool:
    check: dict[str, Any] = spec.get("healthcheck") or {}
    return bool(check) and not check.get("disable") and check.get("test") not in (["NONE"], "NONE")


@dataclass
class ComposeProject:
    engine: Engine
    workdir: Path
    name: str = field(default_factory=lambda: f"{PROJECT_PREFIX}{os.getpid()}-{secrets.token_hex(3)}")
    variables: dict[str, str] = field(default_factory=dict)
    files: tuple[Path, ...] = (COMPOSE_FILE,)

    def __post_init__(self) -> None:
        self.variables = {**self.test_variables(), **self.variables}
        self.env_file = self.workdir / f"{self.name}.env"
        self.env_file.write_text("".join(f"{key}={value}\n" for key, value in self.variables.items()))

    @staticmethod
    def test_variables() -> dict[str, str]:
        """Ports of their own on 127.0.0.1 (the host runs its own PostgreSQL, RabbitMQ and more),
        fresh credentials, and retries shrunk to fractions of a second."""
        return {
            "PUBLISH_ADDRESS": "127.0.0.1",
            "ADMIN_PUBLISH_ADDRESS": "127.0.0.1",
            "API_PORT": str(free_port()),
            "MAILPIT_UI_PORT": str(free_port()),
            "RABBITMQ_UI_PORT": str(free_port()),
            "PROMETHEUS_PORT": str(free_port()),
            "GRAFANA_PORT": str(free_port()),
            "CONVEYOR_IMAGE": APP_IMAGE,
            "ENVIRONMENT": "development",
            "POSTGRES_USER": "conveyor",
            "POSTGRES_DB": "conveyor",
            "POSTGRES_PASSWORD": secrets.token_hex(12),
            "RABBITMQ_USER": "conveyor",
            "RABBITMQ_PASSWORD": secrets.token_hex(12),
            "REDIS_PASSWORD": secrets.token_hex(12),
            "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(12),
            "RETRY_BACKOFF_BASE": "0.2",
            "RETRY_BACKOFF_MAX": "1.0",
            "LOG_LEVEL": "INFO",
        }

    # -- where things are -----------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.variables['API_PORT']}"

    @property
    def mailpit_url(self) -> str:
        return f"http://127.0.0.1:{self.variables['MAILPIT_UI_PORT']}"

    # -- commands -----------------------------------------------------------------------

    def compose(
        self,
        *args: str,
        timeout: float = COMMAND_TIMEOUT_SECONDS,
        check: bool = True,
        project: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            *self.engine.compose,
            "--project-name",
            project or self.name,
            "--project-directory",
            str(REPO),
            *(part for file in self.files for part in ("--file", str(file))),
            "--env-file",
            str(self.env_file),
            *args,
        ]
        done = subprocess.run(argv, env=docker_env(), capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(
                f"`{' '.join(args)}` failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return done

    def config(self) -> dict[str, Any]:
        """The compose file as compose reads it, variables filled in."""
        loaded: dict[str, Any] = yaml.safe_load(self.compose("config").stdout)
        return loaded

    def up(self, *args: str) -> None:
        self.compose("up", "--detach", *args)

    def down(self, volumes: bool = False) -> None:
        self.compose("down", "--remove-orphans", *(["--volumes"] if volumes else []))

    def exec(self, service: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a command in the service's (first) running container."""
        return self.compose("exec", "-T", service, *argv, timeout=timeout, check=False)

    def conveyor(self, *args: str) -> str:
        """`conveyor ARGS` in a one-off container of the app image; its output."""
        return self.compose("run", "--rm", "--no-deps", "api", "conveyor", *args).stdout

    def logs(self, service: str) -> list[dict[str, Any]]:
        """The service's JSON log lines, from every replica."""
        text = self.compose("logs", "--no-color", service).stdout
        return [event for line in text.splitlines() if (event := _json_event(line)) is not None]

    def remove_abandoned(self) -> list[str]:
        """`down --volumes` for every earlier test project whose test run is gone (killed before
        its own clean-up ran); the names it removed. Projects of runs still alive stay."""
        abandoned = sorted(name for name in _project_names() if _abandoned(name) and name != self.name)
        for name in abandoned:
            self.compose("down", "--remove-orphans", "--volumes", project=name, check=False)
            _remove_volumes(name)  # those of another variant's files (redis-data)
        return abandoned

    # -- containers -----------------------------------------------------------------------

    def containers(self, service: str | None = None) -> list[Container]:
        label = f"label=com.docker.compose.project={self.name}"
        listed = subprocess.run(
            ["docker", "ps", "--all", "--quiet", "--no-trunc", "--filter", label],
            env=docker_env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()
        if not listed:
            return []
        inspected = subprocess.run(
            ["docker", "inspect", *listed], env=docker_env(), capture_output=True, text=True, timeout=30
        )
        found = []
        for data in json.loads(inspected.stdout or "[]"):
            if data["Config"]["Labels"].get("com.docker.compose.oneoff", "False") == "True":
                continue
            found.append(Container.from_inspect(data))
        return [c for c in found if service is None or c.service == service]

    def wait_up(self, services: Iterable[str], timeout: float = 240) -> dict[str, list[Container]]:
        """Wait until each service's containers are up (healthy where they have a healthcheck)
        and the one-shot migration exited 0; fail at once when the migration failed."""
        wanted = set(services)
        deadline = time.monotonic() + timeout
        while True:
            by_service: dict[str, list[Container]] = {name: [] for name in wanted}
            for container in self.containers():
                if container.service in wanted:
                    by_service[container.service].append(container)
            failed = [c for cs in by_service.values() for c in cs if _gave_up(c)]
            if failed:
                raise AssertionError(f"containers failed: {failed}\n{self.tail_logs()}")
            if all(cs and all(_done(c) for c in cs) for cs in by_service.values()):
                return by_service
            if time.monotonic() > deadline:
                states = {name: [(c.status, c.health) for c in cs] for name, cs in by_service.items()}
                raise AssertionError(f"not up after {timeout}s: {states}\n{self.tail_logs()}")
            time.sleep(1)

    def tail_logs(self, lines: int = 30) -> str:
        return self.compose("logs", "--no-color", "--tail", str(lines), check=False).stdout


def _project_names() -> set[str]:
    """Test projects that still have a container or a volume."""
    names: set[str] = set()
    for kind in ("ps --all", "volume ls"):
        listed = subprocess.run(
            [
                "docker",
                *kind.split(),
                "--filter",
                f"label={PROJECT_LABEL}",
                "--format",
                f'{{{{.Label "{PROJECT_LABEL}"}}}}',
            ],
            env=docker_env(),
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        names.update(name for name in listed.split() if name.startswith(PROJECT_PREFIX))
    return names


def _remove_volumes(project: str) -> None:
    listed = subprocess.run(
        ["docker", "volume", "ls", "--quiet", "--filter", f"label={PROJECT_LABEL}={project}"],
        env=docker_env(),
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    if listed:
        subprocess.run(["docker", "volume", "rm", *listed], env=docker_env(), capture_output=True, timeout=60)


def _abandoned(name: str) -> bool:
    pid = name.removeprefix(PROJECT_PREFIX).split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


def _done(container: Container) -> bool:
    if container.service == ONE_SHOT:
        return container.status == "exited" and container.exit_code == 0
    return container.up


def _gave_up(container: Container) -> bool:
    """Only the migration gives up for good; the others restart (`restart: unless-stopped`)."""
    return container.service == ONE_SHOT and container.status == "exited" and container.exit_code != 0


def _json_event(line: str) -> dict[str, Any] | None:
    """A log line's JSON object, after compose's `service-1  | ` prefix."""
    start = line.find("{")
    if start < 0:
        return None
    try:
        event = json.loads(line[start:])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


@dataclass
class Stack:
    """The running project and its API: what the compose tests drive."""

    project: ComposeProject
    api: Api

    def queue_depths(self) -> dict[str, int]:
        """Messages per queue, as the broker container's own `rabbitmqctl` counts them."""
        done = self.project.exec(
            "rabbitmq", "rabbitmqctl", "list_queues", "--formatter", "json", "name", "messages"
        )
        assert done.returncode == 0, done.stdout + done.stderr
        rows = json.loads(done.stdout[done.stdout.index("[") :])
        return {str(row["name"]): int(row["messages"]) for row in rows}
