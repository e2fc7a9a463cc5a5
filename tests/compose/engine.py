"""The Docker engine and the images the compose tests run on.

`scripts/docker-engine.sh` starts an engine when none answers and stops it again; the
images come from a registry when one answers, else from Debian's packages
(`deploy/offline-images/build.sh`) under the same names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
ENGINE_SCRIPT = REPO / "scripts" / "docker-engine.sh"
OFFLINE_BUILD = REPO / "deploy" / "offline-images" / "build.sh"
REGISTRY_URL = "https://registry-1.docker.io/v2/"
# A registry that answers at all answers this fast; a blocked one must not cost more.
REGISTRY_TIMEOUT_SECONDS = 3.0
ENGINE_TIMEOUT_SECONDS = 600
OFFLINE_BUILD_TIMEOUT_SECONDS = 900
# `offline` or `registry` forces where the third-party images come from.
IMAGES_SOURCE_VARIABLE = "CONVEYOR_COMPOSE_IMAGES"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


class EngineUnavailable(Exception):
    """Raised when no Docker engine answers and none can be started here."""


@dataclass(frozen=True)
class Engine:
    """A Docker engine that answers, and the compose command that drives it."""

    compose: tuple[str, ...]
    started_here: bool

    @property
    def compose_version(self) -> str:
        return "v2 (docker compose)" if self.compose[:2] == ("docker", "compose") else "v1 (docker-compose)"


def docker_env() -> dict[str, str]:
    """What docker and compose need from the environment, and nothing of the test run's own
    settings: compose interpolates variables from its environment into the compose file."""
    keep = ("PATH", "HOME", "LANG", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_CERT_PATH")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    # The classic builder needs no buildx plugin and never asks a registry for a frontend.
    env["DOCKER_BUILDKIT"] = "0"
    env["COMPOSE_DOCKER_CLI_BUILD"] = "0"
    return env


def why_no_engine() -> str | None:
    """Why this machine has no engine to offer without installing anything; None when one
    answers or can be started here. Cheap, and it starts nothing."""
    if shutil.which("docker") is None:
        return "Docker is not installed (Debian: apt-get install docker.io docker-compose)"
    try:
        answers = subprocess.run(["docker", "info"], env=docker_env(), capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer `docker info`"
    if answers.returncode != 0:
        if os.geteuid() != 0:
            return "no Docker engine answers (docker info), and starting one needs root"
        if shutil.which("dockerd") is None:
            return "no Docker engine answers, and dockerd is not installed (Debian: docker.io)"
    try:
        compose_command()
    except EngineUnavailable as error:
        return str(error)
    return None


def start_engine(install: bool) -> Engine:
    """An engine that answers: the one running, or one started now (`install`: the packages too)."""
    if shutil.which("docker") is None and not install:
        raise EngineUnavailable("Docker is not installed (Debian: apt-get install docker.io docker-compose)")
    env = {**docker_env(), "CONVEYOR_DOCKER_INSTALL": "1" if install else "0"}
    done = subprocess.run(
        [str(ENGINE_SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=ENGINE_TIMEOUT_SECONDS
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise EngineUnavailable(reason.removeprefix("docker-engine: "))
    return Engine(compose=compose_command(), started_here=done.stdout.strip() == "started")


def stop_engine(engine: Engine) -> None:
    """Stop the engine if `start_engine` started it; leave one that was running alone."""
    if engine.started_here:
        subprocess.run(
            [str(ENGINE_SCRIPT), "down"], env=docker_env(), capture_output=True, check=True, timeout=120
        )


def compose_command() -> tuple[str, ...]:
    """Compose v2 when the docker CLI has it, else v1's `docker-compose`."""
    v2 = subprocess.run(["docker", "compose", "version"], env=docker_env(), capture_output=True, timeout=30)
    if v2.returncode == 0:
        return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    raise EngineUnavailable("neither `docker compose` nor `docker-compose` is installed")


def registry_answers() -> bool:
    """Whether Docker Hub answers at all (401 without a token is an answer)."""
    forced = os.environ.get(IMAGES_SOURCE_VARIABLE, "")
    if forced in {"offline", "registry"}:
        return forced == "registry"
    try:
        httpx.get(REGISTRY_URL, timeout=REGISTRY_TIMEOUT_SECONDS)
    except httpx.HTTPError:
        return False
    return True


def build_offline_images(tags: dict[str, str]) -> str:
    """Build the offline images, folder -> tag (`python` -> `python:3.11-slim`); their output."""
    return finish_offline_build(start_offline_build(tags))


def start_offline_build(tags: dict[str, str]) -> subprocess.Popen[str]:
    """Start building the offline images, folder -> tag; `finish_offline_build` waits for them."""
    arguments = [f"{folder}={tag}" for folder, tag in tags.items()]
    return subprocess.Popen(
        [str(OFFLINE_BUILD), *arguments],
        env=docker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish_offline_build(build: subprocess.Popen[str]) -> str:
    """Wait for a build `start_offline_build` started; its output. It must have succeeded."""
    try:
        output, _ = build.communicate(timeout=OFFLINE_BUILD_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        build.kill()
        output, _ = build.communicate()
        raise AssertionError(
            f"offline images did not build in {OFFLINE_BUILD_TIMEOUT_SECONDS} s:\n{output}"
        ) from None
    assert build.returncode == 0, f"offline images did not build:\n{output}"
    return output


def image_size_mb(tag: str) -> float:
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", tag],
        env=docker_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return int(done.stdout.strip()) / 1_000_000
