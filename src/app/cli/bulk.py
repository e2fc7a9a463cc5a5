"""`conveyor enqueue TASK --file jobs.jsonl`: a JSON-lines file of payloads, in batches.

Each non-blank line is one payload (a JSON object); `--delay` and `--priority` apply to every
job. The whole file is validated first, and a bad line is named by its number before anything
is stored. Then it goes in batches of MAX_BATCH_JOBS, each one INSERT in a transaction of its
own: a failure midway leaves the batches before it stored, and the message says which lines.
With `--idempotency-key K`, batch n carries the key `K/n`, so running the same command again
after a failure stores only the batches that were missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from app.cli._common import DB_CONNECT_TIMEOUT_SECONDS, EXIT_USAGE, fail, stderr
from app.jobs.enqueue import MAX_IDEMPOTENCY_KEY_LENGTH

if TYPE_CHECKING:
    from app.jobs.registry import TaskSpec

# Bad lines named before giving up: enough to see a pattern, short enough to read.
MAX_REPORTED_LINES = 10


@dataclass(frozen=True, slots=True)
class Line:
    number: int
    payload: Any


def enqueue_file(
    spec: TaskSpec[Any], path: Path, *, delay: int, priority: int, idempotency_key: str | None
) -> None:
    """Validate every line of `path`, then enqueue them in batches with a progress bar."""
    from app.settings import get_settings

    total = _validate(spec, path, delay=delay, priority=priority)
    if total == 0:
        fail(f"{path}: no jobs (every line is blank)", EXIT_USAGE)
    last_key = _batch_key(idempotency_key or "", (total - 1) // get_settings().max_batch_jobs)
    if idempotency_key is not None and len(last_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        fail("--idempotency-key is too long to number the file's batches", EXIT_USAGE)
    new, repeated, held = _store(spec, path, total, delay=delay, priority=priority, key=idempotency_key)
    again = f"; {repeated} were stored before under this key" if repeated else ""
    duplicates = f"; {held} were duplicates of jobs in flight with their unique key" if held else ""
    typer.echo(f"enqueued {new} job(s) of {spec.name}{again}{duplicates}")


def _lines(path: Path) -> Iterator[Line]:
    import orjson

    try:
        with path.open("rb") as file:
            for number, raw in enumerate(file, 1):
                if not raw.strip():
                    continue
                try:
                    yield Line(number, orjson.loads(raw))
                except orjson.JSONDecodeError as error:
                    yield Line(number, _NotJson(str(error)))
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror or error}", EXIT_USAGE)


@dataclass(frozen=True, slots=True)
class _NotJson:
    reason: str


def _validate(spec: TaskSpec[Any], path: Path, *, delay: int, priority: int) -> int:
    """The number of jobs in the file; exits naming the first bad lines when any is bad."""
    import pydantic

    from app.errors import UnstorableInput
    from app.jobs import enqueue as accepting

    count = 0
    problems: list[str] = []
    for line in _lines(path):
        count += 1
        if isinstance(line.payload, _NotJson):
            problems.append(f"line {line.number}: not JSON: {line.payload.reason}")
        elif not isinstance(line.payload, dict):
            problems.append(f"line {line.number}: a payload must be a JSON object")
        else:
            try:
                accepting.new_job(spec, line.payload, delay_seconds=delay, priority=priority)
            except pydantic.ValidationError as error:
                problems += [f"line {line.number}: {_field_error(e)}" for e in error.errors()]
            except UnstorableInput as error:
                problems.append(f"line {line.number}: {_where(error.loc)}: {error}")
        if len(problems) >= MAX_REPORTED_LINES:
            break
    if problems:
        fail("\n".join([*problems, f"{path} has invalid lines; nothing was stored"]), EXIT_USAGE)
    return count


def _store(
    spec: TaskSpec[Any], path: Path, total: int, *, delay: int, priority: int, key: str | None
) -> tuple[int, int, int]:
    """Enqueue the file batch by batch; (new jobs, jobs a repeated key found stored, lines whose
    unique key an in-flight job held)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from sqlalchemy import create_engine

    from app.ledger.urls import connect_options
    from app.logs import first_line
    from app.settings import get_settings

    settings = get_settings()
    options = connect_options(settings.database_url, settings.db_failover_seconds)
    engine = create_engine(
        settings.database_url,
        pool_size=1,
        connect_args=options | {"connect_timeout": DB_CONNECT_TIMEOUT_SECONDS},
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    new = repeated = held = last_line = 0
    try:
        with Progress(*columns, console=stderr(), transient=True) as progress:
            bar = progress.add_task(spec.name, total=total)
            for number, batch in enumerate(_batches(path, settings.max_batch_jobs)):
                batch_key = None if key is None else _batch_key(key, number)
                with engine.begin() as conn:
                    accepted = spec.enqueue_many_sync(
                        [line.payload for line in batch],
                        session=conn,
                        delay_seconds=delay,
                        priority=priority,
                        idempotency_key=batch_key,
                    )
                new += sum(1 for job in accepted if not job.duplicate)
                repeated += sum(1 for job in accepted if job.replayed)
                held += sum(1 for job in accepted if job.duplicate and not job.replayed)
                last_line = batch[-1].number
                progress.advance(bar, len(batch))
    except typer.Exit:
        raise
    except Exception as error:
        if not last_line:
            fail(f"stopped: {first_line(error)}\nnothing was stored")
        rerun = "; run the same command again to store the rest" if key is not None else ""
        stored = f"lines 1-{last_line} are stored ({new + repeated + held} jobs), the lines after it are not"
        fail(f"stopped: {first_line(error)}\n{stored}{rerun}")
    finally:
        engine.dispose()
    return new, repeated, held


def _batches(path: Path, size: int) -> Iterator[list[Line]]:
    batch: list[Line] = []
    for line in _lines(path):
        batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _batch_key(key: str, number: int) -> str:
    return f"{key}/{number}"


def _field_error(error: Any) -> str:
    return f"{_where(error.get('loc', ()))}: {error.get('msg', '')}"


def _where(loc: Any) -> str:
    return ".".join(str(part) for part in loc) or "payload"
