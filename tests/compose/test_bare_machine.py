"""`make dev` on a Debian machine with none of the services installed (tests/compose/bare.py):
as root it installs them from Debian's packages, starts them, and serves the README's first
example."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.compose.bare import IMAGE, BareMachine, docker
from tests.compose.engine import Engine, build_offline_images, registry_answers

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1500)]
# pip, three Debian packages, migrations: a few minutes on 2 cores.
MAKE_DEV_SECONDS = 1200


@pytest.fixture
def bare_machine(docker_engine: Engine) -> Iterator[BareMachine]:
    if docker("image", "inspect", IMAGE, check=False).startswith("[]"):
        pulled = (
            registry_answers()
            and subprocess.run(["docker", "pull", IMAGE], capture_output=True).returncode == 0
        )
        if not pulled:
            build_offline_images({"python": IMAGE})
    machine = BareMachine().start()
    try:
        yield machine
    finally:
        machine.remove()


def test_make_dev_on_a_machine_without_the_services_installs_them_and_the_first_example_works(
    bare_machine: BareMachine,
) -> None:
    assert bare_machine.installed_services() == []
    bare_machine.add_make()
    bare_machine.start_make_dev()
    key = bare_machine.wait_for_key(MAKE_DEV_SECONDS)
    assert bare_machine.installed_services() == ["pg_ctlcluster", "rabbitmq-server", "redis-server"]
    assert bare_machine.first_example(key) == {"post_status": 202, "get_status": 200, "state": "succeeded"}
