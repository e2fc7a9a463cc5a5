"""One compose project for the whole package: a Docker engine (started here if none answers),
the images, `up`, and `down --volumes` in the end whatever happened.

Without an engine the tests fail in CI (CI=true); elsewhere the test module skips, with
one line, when this machine has no engine to offer.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compose.api import Api
from tests.compose.bare import BareRun
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
from tests.compose.project import (
    APP_IMAGE,
    FACTS,
    REDIS_FILES,
    ComposeProject,
    Stack,
    default_services,
)
from tests.compose.redis_variant import RedisVariantRun, run_redis_variant
from tests.static.shipping import DOCKERFILE, dockerfile_stages

SCOPES = "enqueue,read,operate,metrics"
# The third-party services, by the folder of deploy/offline-images/ that builds a stand-in.
OFFLINE_FOLDERS = {"postgres": "postgres", "rabbitmq": "rabbitmq", "redis": "redis", "mailpit": "mailpit"}
REDIS_TEST_FILE = "test_compose_redis.py"


class Preparation(threading.Thread):
    """The engine, the images, `up`, and every service healthy: started as soon as the run knows
    it holds compose tests (they run last), so the minutes of building and of healthchecks pass
    while the rest of the suite runs; then, when its test was collected, the Redis variant is
    checked and brought down again (tests/compose/redis_variant.py). The fixtures below wait."""

    def __init__(self) -> None:
        super().__init__(name="compose-preparation", daemon=True)
        self.engine: Engine | None = None
        self.project: ComposeProject | None = None
        self.error: BaseException | None = None
        self.handed_over = False
        self.bare: BareRun | None = None  # started once the images are built, when asked for
        self.wants_bare = False
        # The Redis variant (docker-compose.redis.yml), a project of its own, when asked for.
        self.redis_run: RedisVariantRun | None = None
        self.redis_error: BaseException | None = None
        self.wants_redis = False

    def run(self) -> None:
        try:
            self.engine = start_engine(install=in_ci())
            FACTS["compose"] = self.engine.compose_version
            FACTS["engine"] = (
                "started for this run, stopped after" if self.engine.started_here else "already running"
            )
            workdir = Path(tempfile.mkdtemp(prefix="conveyor-compose-"))
            project = ComposeProject(self.engine, workdir)
            if removed := project.remove_abandoned():
                FACTS["removed abandoned test projects"] = ", ".join(removed)
            redis = ComposeProject(self.engine, workdir, files=REDIS_FILES) if self.wants_redis else None
            _images(project, redis)
            if self.wants_bare:
                self.bare = BareRun()
                self.bare.start()
            self.project = project
            started = time.monotonic()
            project.up()
            # Generous: the rest of the suite loads the machine meanwhile, and a healthcheck
            # that timed out under that load passes again once it eases.
            project.wait_up(default_services(), timeout=900)
            FACTS["up -> every service healthy"] = f"{time.monotonic() - started:.0f} s"
            if redis is not None:
                self._check_redis_variant(redis)
                # Its load may have pushed a healthcheck of this stack past its timeout.
                project.wait_up(default_services(), timeout=300)
        except BaseException as error:  # handed to the first fixture that waits
            self.error = error

    def _check_redis_variant(self, redis: ComposeProject) -> None:
        """Its failures are its own test's: the main stack's tests run on."""
        try:
            self.redis_run = run_redis_variant(redis, "enqueue,read")
        except Exception as error:
            self.redis_error = error

    def clean_up(self) -> None:
        """`down --volumes` and the engine stopped if started here (when no fixture did it)."""
        if self.bare is not None:
            self.bare.join()
        if self.project is not None:
            self.project.down(volumes=True)
        if self.engine is not None:
            stop_engine(self.engine)


PREPARATION: Preparation | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global PREPARATION
    if session.config.option.collectonly:
        return
    here = [item for item in session.items if Path(str(item.fspath)).parent == Path(__file__).parent]
    if here:
        PREPARATION = Preparation()
        names = {Path(str(item.fspath)).name for item in here}
        PREPARATION.wants_bare = "test_bare_machine.py" in names
        PREPARATION.wants_redis = REDIS_TEST_FILE in names
        PREPARATION.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if PREPARATION is not None and not PREPARATION.handed_over:
        PREPARATION.join()
        PREPARATION.clean_up()


def _prepared() -> Preparation:
    preparation = PREPARATION
    if preparation is None:  # a run that did not collect this package first (-p no:...)
        preparation = Preparation()
        preparation.start()
    preparation.join()
    return preparation


@pytest.fixture
def bare_run(docker_engine: Engine) -> BareRun:
    """The background check of a bare machine (started now if the preparation did not), done."""
    preparation = _prepared()
    if preparation.bare is None:
        preparation.bare = BareRun()
        preparation.bare.start()
    preparation.bare.join()
    if preparation.bare.error is not None:
        raise preparation.bare.error
    return preparation.bare


@pytest.fixture(scope="package")
def docker_engine() -> Iterator[Engine]:
    preparation = _prepared()
    if isinstance(preparation.error, EngineUnavailable) or preparation.engine is None:
        message = f"compose tests need a Docker engine: {preparation.error}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    preparation.handed_over = True
    try:
        yield preparation.engine
    finally:
        stop_engine(preparation.engine)


@pytest.fixture(scope="package")
def compose_stack(docker_engine: Engine) -> Iterator[Stack]:
    preparation = _prepared()
    project = preparation.project
    try:
        if preparation.error is not None:
            raise preparation.error
        assert project is not None
        api = Api(project.api_url)
        # The first key, as the README says to make it: the key is the command's last line.
        api.key = project.conveyor("keys", "create", "compose-tests", "--scopes", SCOPES).splitlines()[-1]
        yield Stack(project, api)
    finally:
        if project is not None:
            project.down(volumes=True)


@pytest.fixture
def redis_run(docker_engine: Engine) -> RedisVariantRun:
    """What the background check of the Redis variant saw (it is down again by now)."""
    preparation = _prepared()
    if preparation.error is not None:
        raise preparation.error
    if preparation.redis_error is not None:
        raise preparation.redis_error
    assert preparation.redis_run is not None, f"the Redis variant was not run (only with {REDIS_TEST_FILE})"
    return preparation.redis_run


def _images(project: ComposeProject, redis: ComposeProject | None) -> None:
    """Third-party images from the registry when it answers, else built from Debian's packages
    under the same names; and the app image, built once."""
    config = project.config()["services"]
    third_party = {name: str(config[name]["image"]) for name in OFFLINE_FOLDERS if name in config}
    # The variant's own services (`redis`): the ones it shares with docker-compose.yml are above.
    variant = redis.config()["services"] if redis is not None else {}
    extra = {
        name: str(variant[name]["image"])
        for name in OFFLINE_FOLDERS
        if name in variant and name not in config
    }
    unknown = {
        name
        for name, spec in config.items()
        if name in default_services() and "build" not in spec and spec.get("image") != APP_IMAGE
    } - set(third_party)
    assert not unknown, f"no offline image for {unknown}: add one to deploy/offline-images/"
    started = time.monotonic()
    if (
        registry_answers()
        and project.compose("pull", *third_party, check=False).returncode == 0
        and (redis is None or redis.compose("pull", *extra, check=False).returncode == 0)
    ):
        FACTS["images"] = "from the registry"
        project.compose("build", "--pull", timeout=900)
    else:
        bases = {stage.base for stage in dockerfile_stages(DOCKERFILE.read_text())}
        (python,) = bases
        # The app image needs the Python one alone: it builds while the others do.
        build_offline_images({"python": python})
        wanted = {**third_party, **extra}
        others = start_offline_build({OFFLINE_FOLDERS[name]: tag for name, tag in wanted.items()})
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
