"""Readers for the shipping files (compose, Dockerfile, .dockerignore, monitoring configs).

Shared by the static checks: no Docker engine is needed, only the files and the CLI's
own definition.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import typer.main
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DEPLOY = REPO / "deploy"
COMPOSE_SCHEMA = Path(__file__).with_name("compose_spec.json")

# The services built from this repository's image, and those that serve health to probe.
APP_SERVICES = ("migrate", "api", "relay", "worker")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def compose_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(COMPOSE_SCHEMA.read_text())
    return loaded


def argv(command: str | list[str]) -> list[str]:
    """A compose `command` (string or list) as an argv."""
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def healthcheck_argv(test: str | list[str]) -> list[str]:
    """The argv a container runs for a compose or Dockerfile healthcheck `test`."""
    parts = [test] if isinstance(test, str) else list(test)
    if parts[0] == "CMD":
        return parts[1:]
    if parts[0] == "CMD-SHELL":
        # Compose turns `$$` into `$` before handing the string to the container's shell.
        return ["sh", "-c", parts[1].replace("$$", "$")]
    raise AssertionError(f"healthcheck test must start with CMD or CMD-SHELL: {test}")


@cache
def conveyor_cli() -> Any:
    """The `conveyor` command as Click sees it: the same object `conveyor --help` prints."""
    from app.cli.commands import cli

    return typer.main.get_command(cli)


def parse_conveyor(args: list[str]) -> dict[str, Any]:
    """Parse `conveyor ARGS` exactly as the CLI would, without running it; the parsed options.

    Raises the CLI's usage error for an unknown subcommand, option or bad value.
    """
    assert args, "an empty command"
    assert Path(args[0]).name == "conveyor", f"not a conveyor command: {args}"
    group = conveyor_cli()
    name, rest = args[1], args[2:]
    assert name in group.commands, f"`conveyor {name}` is not a subcommand: {sorted(group.commands)}"
    context = group.commands[name].make_context(name, list(rest))
    params: dict[str, Any] = dict(context.params)
    return params


def options_of(args: list[str]) -> list[str]:
    return [arg.split("=", 1)[0] for arg in args if arg.startswith("--")]


# --- Dockerfile -----------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD."""
        start = self.value.index("[")
        loaded: list[str] = json.loads(self.value[start:])
        return loaded


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    result = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        result.append(Instruction(keyword.upper(), value.strip()))
    return result


def dockerfile_stages(text: str) -> list[Stage]:
    """The build stages, with `ARG` defaults declared before the first FROM substituted."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in dockerfile_instructions(text):
        if instruction.keyword == "ARG" and not stages and "=" in instruction.value:
            key, _, default = instruction.value.partition("=")
            args[key.strip()] = default.strip()
        elif instruction.keyword == "FROM":
            words = instruction.value.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif stages:
            stages[-1].instructions.append(instruction)
    return stages


# --- .dockerignore --------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: `*` and `?` stop at `/`, `**` crosses it."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(path: str, lines: list[str] | None = None) -> bool:
    """Whether the build context leaves `path` out: the last matching rule wins, `!` re-includes,
    and a rule that matches a parent directory covers everything below it."""
    rules = lines if lines is not None else DOCKERIGNORE.read_text().splitlines()
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for rule in rules:
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        regex = _pattern_regex(rule.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded
