"""One compose project for the whole package: a Docker engine (started here if none answers),
the images, `up`, and `down --volumes` in the end whatever happened.

Without an engine the tests fail in CI (CI=true); elsewhere the test module skips, with
one line, when this machine has no engine to offer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.compose.api import Api
from tests.compose.engine import (
    Engine,
    EngineUnavailable,
    build_offline_images,
    finish_offline_build,
    image_size_mb,
    in_ci,
    registry_answers,
    start_engine,
    start_offline_build,
    stop_engine,
)
from tests.compose.project import APP_IMAGE, FACTS, ComposeProject, Stack, default_services
from tests.static.shipping import DOCKERFILE, dockerfile_stages

SCOPES = "enqueue,read,operate,metrics"
# The third-party services, by the folder of deploy/offline-images/ that builds a stand-in.
OFFLINE_FOLDERS = {"postgres": "postgres", "rabbitmq": "rabbitmq", "mailpit": "mailpit"}


@pytest.fixture(scope="package")
def docker_engine() -> Iterator[Engine]:
    try:
        engine = start_engine(install=in_ci())
    except EngineUnavailable as error:
        message = f"compose tests need a Docker engine: {error}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    FACTS["compose"] = engine.compose_version
    FACTS["engine"] = "started for this run, stopped after" if engine.started_here else "already running"
    try:
        yield engine
    finally:
        stop_engine(engine)


@pytest.fixture(scope="package")
def compose_stack(docker_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    project = ComposeProject(docker_engine, tmp_path_factory.mktemp("compose"))
    try:
        if removed := project.remove_abandoned():
            FACTS["removed abandoned test projects"] = ", ".join(removed)
        _images(project)
        started = time.monotonic()
        project.up()
        project.wait_up(default_services())
        FACTS["up -> every service healthy"] = f"{time.monotonic() - started:.0f} s"
        api = Api(project.api_url)
        # The first key, as the README says to make it: the key is the command's last line.
        api.key = project.conveyor("keys", "create", "compose-tests", "--scopes", SCOPES).splitlines()[-1]
        yield Stack(project, api)
    finally:
        project.down(volumes=True)


def _images(project: ComposeProject) -> None:
    """Third-party images from the registry when it answers, else built from Debian's packages
    under the same names; and the app image, built once."""
    config = project.config()["services"]
    third_party = {name: str(config[name]["image"]) for name in OFFLINE_FOLDERS if name in config}
    unknown = {
        name
        for name, spec in config.items()
        if name in default_services() and "build" not in spec and spec.get("image") != APP_IMAGE
    } - set(third_party)
    assert not unknown, f"no offline image for {unknown}: add one to deploy/offline-images/"
    started = time.monotonic()
    if registry_answers() and project.compose("pull", *third_party, check=False).returncode == 0:
        FACTS["images"] = "from the registry"
        project.compose("build", "--pull", timeout=900)
    else:
        bases = {stage.base for stage in dockerfile_stages(DOCKERFILE.read_text())}
        (python,) = bases
        # The app image needs the Python one alone: it builds while the others do.
        build_offline_images({"python": python})
        others = start_offline_build({OFFLINE_FOLDERS[name]: tag for name, tag in third_party.items()})
        try:
            project.compose("build", timeout=900)
        except BaseException:
            others.kill()
            others.wait()
            raise
        finish_offline_build(others)
        FACTS["images"] = "offline, built from Debian's packages (deploy/offline-images)"
    FACTS["images + app image build"] = f"{time.monotonic() - started:.0f} s"
    FACTS["app image size"] = f"{image_size_mb(APP_IMAGE):.0f} MB"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FACTS:
        terminalreporter.section("docker compose")
        for name, value in FACTS.items():
            terminalreporter.write_line(f"{name}: {value}")
