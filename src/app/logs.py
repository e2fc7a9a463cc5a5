"""structlog set-up: JSON in containers, pretty on a terminal, stdlib loggers (Dramatiq, uvicorn) included."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

import orjson
import structlog

from app.settings import get_settings

_configured = False


def configure_logging() -> None:
    """Our lines go straight through structlog (orjson, no stdlib LogRecord: a line per job
    in the worker); Dramatiq's, uvicorn's and alembic's stdlib lines go through the
    same processors and renderer, so everything reads alike."""
    global _configured
    if _configured:
        return
    _configured = True
    settings = get_settings()
    level = settings.log_level.upper()
    as_json = settings.log_format == "json" or (settings.log_format == "auto" and not sys.stderr.isatty())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    console = structlog.dev.ConsoleRenderer(
        colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
    )
    native: list[structlog.typing.Processor]
    if as_json:
        native = [
            *shared,
            _logger_key,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(_orjson),
        ]
    else:
        native = [*shared, _logger_key, console]
    # A text stream: Dramatiq's worker processes replace stderr with a pipe that has no .buffer.
    factory = structlog.WriteLoggerFactory(_direct(sys.stderr))
    structlog.configure(
        processors=native,
        logger_factory=factory,
        # Filters below the level before any processor runs: a skipped line costs a call.
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if as_json else _identity,
            structlog.processors.JSONRenderer() if as_json else console,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pika logs every lost socket, failed connect and close of a closed connection at error
    # level, with tracebacks; what it reports reaches us as exceptions, which our own code
    # (the relay, the consumers' outage line below) reports once per outage.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    handler.addFilter(ConsumerOutages())
    # Dramatiq warns on every skipped message; here a skip is a normal outcome (a duplicate
    # or a finished job), which the ledger middleware logs itself.
    logging.getLogger("dramatiq.worker.WorkerThread").setLevel(logging.ERROR)


# A write of at most this many bytes to a pipe is never interleaved with another (POSIX PIPE_BUF).
ATOMIC_WRITE_BYTES = 4096


class _DirectStderr:
    """Our lines straight to file descriptor 2, each in one write, past Dramatiq's log pipe.

    Dramatiq's worker processes replace `sys.stderr` with a pipe to the parent process, which
    reads every line and writes it again to the real stderr: two processes and four system
    calls per line, at a line per job. The child still holds the real stderr as fd 2; a
    line of up to 4 KiB written there in one call reaches a pipe, a file or a terminal whole,
    as the parent's copy would. Longer lines (tracebacks) and a failed write take the pipe.
    """

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def write(self, text: str) -> None:
        data = text.encode("utf-8", errors="replace")
        if len(data) <= ATOMIC_WRITE_BYTES:
            try:
                if os.write(2, data) == len(data):
                    return
            except OSError:
                pass
        self.fallback.write(text)
        self.fallback.flush()

    def flush(self) -> None:
        """Every line is written when it is logged."""


def _direct(stream: Any) -> Any:
    """Dramatiq's pipe, bypassed for our lines; any other stream as it is."""
    from dramatiq.compat import StreamablePipe

    return _DirectStderr(stream) if isinstance(stream, StreamablePipe) else stream


_NAME_KEY = "logger_name"  # `logger` itself is a parameter of structlog.get_logger


def _logger_key(logger: object, name: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    event["logger"] = event.pop(_NAME_KEY, None)
    return event


def _orjson(value: object, **kwargs: Any) -> str:
    return orjson.dumps(value, default=kwargs.get("default")).decode()


def _identity(logger: object, name: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    return event


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    # Initial values keep the proxy lazy: it assembles on first use, after configure_logging().
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(**{_NAME_KEY: name})
    return logger


class Outage:
    """One warning when a dependency goes away and one line when it is back, not one per retry.

    `failed` is called on every failed try; only the first of an outage is logged (the
    later ones at debug). `recovered` logs how long the outage lasted, once. Threads of a
    process may share one.
    """

    def __init__(self, logger: structlog.typing.FilteringBoundLogger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.since: float | None = None
        self.tries = 0
        self._lock = threading.Lock()

    def failed(self, error: BaseException | str, **context: Any) -> None:
        reason = error if isinstance(error, str) else first_line(error)
        with self._lock:
            self.tries += 1
            first = self.since is None
            if first:
                self.since = time.monotonic()
        if first:
            self.logger.warning(
                f"{self.what} unavailable; retrying until it is back", error=reason, **context
            )
        else:
            self.logger.debug(f"{self.what} still unavailable", error=reason, tries=self.tries, **context)

    def recovered(self, **context: Any) -> None:
        with self._lock:
            if self.since is None:
                return
            seconds, tries = time.monotonic() - self.since, self.tries
            self.since = None
            self.tries = 0
        self.logger.warning(f"{self.what} available again", down_s=round(seconds, 1), tries=tries, **context)

    @property
    def down(self) -> bool:
        return self.since is not None


# Dramatiq's consumer threads (one per queue) report each failed reconnect at critical level.
CONSUMER_LOGGERS = "dramatiq.worker.ConsumerThread"
BROKER_OUTAGE = Outage(get_logger("conveyor.worker"), "broker (the worker's consumers)")


class ConsumerOutages(logging.Filter):
    """Turns Dramatiq's consumer reconnect lines into one warning per outage; the consumer that
    connects again (`execution.consumer`) logs the recovery."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(CONSUMER_LOGGERS):
            return True
        message = record.getMessage()
        if message.startswith("Consumer encountered a connection error"):
            BROKER_OUTAGE.failed(message.partition(": ")[2] or message)
            return False
        return not (message.startswith("Restarting consumer in") and BROKER_OUTAGE.down)


def first_line(error: BaseException) -> str:
    """An error in one line: its first line, or its type when it says nothing."""
    return (str(error).strip().splitlines() or [""])[0] or type(error).__name__
