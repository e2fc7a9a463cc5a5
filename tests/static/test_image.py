"""The Dockerfile and .dockerignore, checked by parsing: stages, user, health, layers, context."""

from __future__ import annotations

import json
import re

import pytest

from tests.static.shipping import (
    DOCKERFILE,
    Stage,
    argv,
    dockerfile_instructions,
    dockerfile_stages,
    dockerignore_excludes,
    parse_conveyor,
    service,
)

pytestmark = pytest.mark.static

BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|build-essential|make|clang|python3?-dev|libpq-dev)\b")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|PRIVATE", re.IGNORECASE)


def stages() -> list[Stage]:
    return dockerfile_stages(DOCKERFILE.read_text())


def final() -> Stage:
    return stages()[-1]


def test_the_image_is_built_in_stages_on_python_3_11_slim() -> None:
    built = stages()
    assert len(built) >= 2
    assert {stage.base for stage in built} == {"python:3.11-slim"}
    assert final().name == "runtime", "compose builds the `runtime` target"
    copied_from = {
        flag.split("=", 1)[1]
        for instruction in final().all("COPY")
        for flag in instruction.value.split()
        if flag.startswith("--from=")
    }
    assert copied_from & {stage.name for stage in built[:-1]}, "the final stage copies the build's result"


def test_dependencies_are_installed_in_a_layer_before_the_source_is_copied() -> None:
    build = stages()[0]
    steps = [(i.keyword, i.value) for i in build.instructions if i.keyword in {"COPY", "RUN"}]
    first_source = next(n for n, (kw, value) in enumerate(steps) if kw == "COPY" and "src" in value.split())
    installs = [n for n, (kw, value) in enumerate(steps) if kw == "RUN" and "pip install" in value]
    assert installs, steps
    assert installs[0] < first_source, steps
    before = [value for kw, value in steps[: installs[0]] if kw == "COPY"]
    assert before == ["pyproject.toml ./"], "only the dependency list may invalidate the dependency layer"


def test_the_final_stage_has_no_build_tools_and_installs_nothing() -> None:
    for instruction in final().all("RUN"):
        assert not BUILD_TOOLS.search(instruction.value), instruction.value
        assert "pip install" not in instruction.value
        assert "apt-get install" not in instruction.value


def test_the_final_stage_runs_as_an_unprivileged_user() -> None:
    users = final().all("USER")
    assert users, "no USER: the container would run as root"
    user = users[-1].value.split(":")[0]
    assert user not in {"root", "0"}


def test_the_image_healthcheck_is_a_real_conveyor_command() -> None:
    checks = final().all("HEALTHCHECK")
    assert len(checks) == 1
    value = checks[0].value
    assert "--interval=" in value
    assert "--timeout=" in value
    assert checks[0].exec_form()[:1] == ["conveyor"]
    parse_conveyor(checks[0].exec_form())


def test_the_default_command_is_the_api_as_compose_runs_it() -> None:
    command = final().all("CMD")[-1].exec_form()
    parse_conveyor(command)
    assert command == argv(service("api")["command"])


def test_no_secret_is_baked_into_the_image() -> None:
    for instruction in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction.keyword in {"ENV", "ARG"}:
            assert not SECRET_NAME.search(instruction.value), instruction.value
        if instruction.keyword in {"COPY", "ADD"}:
            assert ".env" not in instruction.value.split(), instruction.value


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "src/app/worker.py", "src/app/migrations"])
def test_the_build_context_holds_what_the_dockerfile_copies(path: str) -> None:
    assert not dockerignore_excludes(path)


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.production",
        ".git/HEAD",
        ".venv/bin/python",
        "tests/conftest.py",
        "src/app/__pycache__/worker.cpython-311.pyc",
        "bench/results/x.json",
    ],
)
def test_the_build_context_leaves_out_secrets_and_local_state(path: str) -> None:
    assert dockerignore_excludes(path)


def test_the_dockerignore_reader_follows_docker_rules() -> None:
    rules = ["*", "!src/", "src/**/*.pyc", "!src/keep.pyc"]
    assert dockerignore_excludes("notes.txt", rules)
    assert not dockerignore_excludes("src/app/x.py", rules)
    assert dockerignore_excludes("src/app/x.pyc", rules)
    assert not dockerignore_excludes("src/keep.pyc", rules)


def test_the_exec_form_reader_reads_json_arrays() -> None:
    (instruction,) = dockerfile_instructions('HEALTHCHECK --interval=5s \\\n  CMD ["a", "b c"]\n')
    assert instruction.exec_form() == json.loads('["a", "b c"]')
