"""What the operating commands share: output, exit codes, the database session, task names.

Exit codes scripts can trust: 0 done, 1 failed or not found, 2 the command line was wrong
(what Typer answers to a malformed command line too). Results go to stdout; errors, warnings and progress
bars to stderr.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from app.jobs.registry import TaskSpec

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_USAGE = 2
# Wide enough that job ids and task names never wrap when output goes to a file or a pipe.
PIPE_WIDTH = 200
DB_CONNECT_TIMEOUT_SECONDS = 5
ERROR_CHARS = 80


def stdout() -> Console:
    if sys.stdout.isatty():
        return Console(highlight=False, markup=False)
    return Console(width=PIPE_WIDTH, highlight=False, markup=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False, markup=False)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def usage(message: str) -> NoReturn:
    fail(f"usage error: {message} (see --help)", EXIT_USAGE)


def warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def print_json(value: Any) -> None:
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def with_database(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run `work` against the ledger in a fresh event loop, with an engine of its own."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from app.logs import first_line
    from app.settings import get_settings

    async def main() -> T:
        engine = create_async_engine(
            get_settings().database_url,
            poolclass=NullPool,  # one command, a few statements: nothing worth pooling
            connect_args={"connect_timeout": DB_CONNECT_TIMEOUT_SECONDS},
        )
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except (OperationalError, InterfaceError) as error:
        fail(f"database unreachable: {first_line(error.orig or error)}")
    except DBAPIError as error:  # e.g. not migrated: say so in one line, not a traceback
        fail(f"database error: {first_line(error.orig or error)}")


def task_spec(name: str) -> TaskSpec[Any]:
    """The public task called `name`, or uniquely ending in `.name` (`echo`); a usage error if none."""
    import app.tasks  # noqa: F401  (registers every task)
    from app.jobs.registry import get_task, public_tasks

    spec = get_task(name)
    if spec is None:
        matches = [t for t in public_tasks() if t.name.rsplit(".", 1)[-1] == name]
        spec = matches[0] if len(matches) == 1 else None
    if spec is None or not spec.public:
        known = ", ".join(sorted(t.name for t in public_tasks()))
        usage(f"unknown task {name!r}; known tasks: {known}")
    return spec


def task_filter(name: str | None) -> str | None:
    """A --task filter: a known task's short name is expanded; anything else is taken as is,
    since the ledger may hold jobs of a task this version no longer has."""
    if name is None:
        return None
    import app.tasks  # noqa: F401
    from app.jobs.registry import get_task, public_tasks

    if get_task(name) is not None:
        return name
    matches = [t.name for t in public_tasks() if t.name.rsplit(".", 1)[-1] == name]
    return matches[0] if len(matches) == 1 else name


def task_queues() -> list[str]:
    import app.tasks  # noqa: F401
    from app.jobs.registry import all_tasks

    return sorted({spec.queue for spec in all_tasks()})


def when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "-"
    return f"{duration((now or datetime.now(UTC)) - moment)} ago"


def duration(delta: Any) -> str:
    seconds = delta.total_seconds() if hasattr(delta, "total_seconds") else float(delta)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def short(text: str | None, limit: int = ERROR_CHARS) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def fields(rows: Iterable[tuple[str, str | Text]]) -> Table:
    """One thing's fields, a name and its value per line (the `show` commands)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, shown in rows:
        grid.add_row(name, shown)
    return grid
