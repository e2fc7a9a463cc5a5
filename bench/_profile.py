"""Sampling profiles of a running process (py-spy) and a ranked summary of where its time goes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")

# Which library a frame belongs to, by its file path; the first match wins.
PACKAGES: tuple[tuple[str, str], ...] = (
    ("/app/", "conveyor (src/app)"),
    ("/sqlalchemy/", "sqlalchemy"),
    ("/psycopg", "psycopg"),
    ("/structlog/", "logging (structlog + stdlib)"),
    ("/logging/", "logging (structlog + stdlib)"),
    ("/pika/", "pika"),
    ("/dramatiq/", "dramatiq"),
    ("/prometheus_client/", "prometheus_client"),
    ("/pydantic", "pydantic"),
    ("/fastapi/", "fastapi"),
    ("/starlette/", "starlette"),
    ("/uvicorn/", "uvicorn"),
    ("/orjson", "orjson"),
    ("/asyncio/", "asyncio"),
    ("/threading.py", "threading/queue"),
    ("/queue.py", "threading/queue"),
    ("/json/", "json"),
    ("/uuid.py", "uuid"),
    ("/bench/", "bench harness"),
)


@dataclass
class Marker:
    """Samples whose stack holds a frame whose function (or file) matches `pattern`."""

    label: str
    pattern: str


WORKER_MARKERS = (
    Marker("claim: LedgerMiddleware.before_process_message", r"^LedgerMiddleware\.before_process_message "),
    Marker("finish: LedgerMiddleware.after_process_message", r"^LedgerMiddleware\.after_process_message "),
    Marker("the task itself (actor_fn → echo)", r"^actor_fn "),
    Marker("log calls (structlog/logging, anywhere)", r"\((?:[^)]*/structlog/|[^)]*/logging/)"),
    Marker("pool checkout (incl. pre-ping)", r"^_ConnectionFairy\._checkout "),
    Marker("pre-ping SELECT 1 (do_ping)", r"do_ping "),
    Marker("statement execution (Connection._execute_context)", r"^Connection\._execute_context "),
    Marker(
        "commit (Connection.commit/_commit_impl)",
        r"^(?:Connection\._commit_impl|RootTransaction\._do_commit) ",
    ),
    Marker("Prometheus metrics", r"/prometheus_client/"),
    Marker("pika (AMQP consume/ack)", r"/pika/"),
    Marker("Dramatiq message decode/dispatch", r"^(?:_WorkerThread\.process_message|Message\.decode) "),
)

RELAY_MARKERS = (
    Marker("Relay.publish_due (one batch)", r"^Relay\.publish_due "),
    Marker("broker.enqueue (one message)", r"^RabbitmqBroker\.enqueue "),
    Marker("basic_publish + wait for its confirm", r"^BlockingChannel\.basic_publish "),
    Marker("message encode (Dramatiq JSON)", r"^(?:Message\.encode|JSONEncoder\.encode) "),
    Marker(
        "take_publishable (UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED) RETURNING)", r"^take_publishable "
    ),
    Marker("database client (sqlalchemy + psycopg frames)", r"/(?:sqlalchemy|psycopg)/"),
    Marker("pika", r"/pika/"),
    Marker("log calls (structlog/logging, anywhere)", r"\((?:[^)]*/structlog/|[^)]*/logging/)"),
)

API_MARKERS = (
    Marker("uvicorn/httptools protocol (parse, send)", r"/uvicorn/protocols/"),
    Marker("HttpMetrics middleware", r"^HttpMetrics\."),
    Marker("BodyGuard (413/415 guard, reads the body)", r"^BodyGuard\.__call__ "),
    Marker("route handler: enqueue (awaits the batch)", r"^enqueue "),
    Marker("body parse: _parse (pydantic from bytes)", r"^_parse "),
    Marker("payload validation: _payload", r"^_payload "),
    Marker("Intake (group-commit writer task)", r"^Intake\."),
    Marker("database client (sqlalchemy + psycopg frames)", r"/(?:sqlalchemy|psycopg)/"),
    Marker("Prometheus metrics", r"/prometheus_client/"),
    Marker("log calls (structlog/logging, anywhere)", r"\((?:[^)]*/structlog/|[^)]*/logging/)"),
    Marker("FastAPI dependencies (solve_dependencies)", r"^solve_dependencies "),
)


@dataclass
class Profile:
    samples: int = 0
    by_package: Counter[str] = field(default_factory=Counter)
    self_time: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    markers: Counter[str] = field(default_factory=Counter)


FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")


def package_of(frame: str) -> str:
    match = FRAME.match(frame)
    path = match.group("file") if match else frame
    for needle, name in PACKAGES:
        if needle in path:
            return name
    return "python stdlib / other"


def short(frame: str) -> str:
    """`func (…/site-packages/sqlalchemy/engine/base.py)` → `func (sqlalchemy/engine/base.py)`."""
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    for anchor in ("site-packages/", "/src/", "/lib/python3.11/"):
        if anchor in path:
            path = path.split(anchor, 1)[1]
            break
    return f"{match.group('func')} ({path})"


def read_collapsed(path: Path, markers: tuple[Marker, ...]) -> Profile:
    profile = Profile()
    compiled = [(m.label, re.compile(m.pattern)) for m in markers]
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        profile.samples += count
        profile.by_package[package_of(frames[-1])] += count
        profile.self_time[short(frames[-1])] += count
        for name in {short(f) for f in frames}:
            profile.inclusive[name] += count
        for label, pattern in compiled:
            if any(pattern.search(f) for f in frames):
                profile.markers[label] += count
    return profile


def report(profile: Profile, title: str, top: int = 15) -> str:
    if not profile.samples:
        return f"### {title}\n\n(no samples)\n"

    def pct(n: int) -> str:
        return f"{100.0 * n / profile.samples:5.1f}%"

    out = [f"### {title}", "", f"{profile.samples} samples (GIL-holding thread only).", ""]
    out.append("Where the CPU went, by the library of the innermost frame:")
    out += [f"  {pct(n)}  {name}" for name, n in profile.by_package.most_common(12)]
    out += ["", "Share of samples inside each step (inclusive; steps overlap):"]
    out += [f"  {pct(n)}  {name}" for name, n in profile.markers.most_common()]
    out += ["", f"Top {top} functions by self time:"]
    out += [f"  {pct(n)}  {name}" for name, n in profile.self_time.most_common(top)]
    return "\n".join(out) + "\n"


class Recorder:
    """`py-spy record` attached to one process for a fixed time."""

    def __init__(self, pid: int, out: Path, duration: int, rate: int = 100) -> None:
        if PY_SPY is None:
            raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
        self.out = out
        argv = [PY_SPY, "record", "--pid", str(pid), "--duration", str(duration), "--rate", str(rate)]
        argv += ["--format", "raw", "--nolineno", "--full-filenames", "--gil", "--output", str(out)]
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )

    def finish(self, markers: tuple[Marker, ...], timeout: float = 120.0) -> Profile:
        """Wait for the recording to end (it stops early if the process exits) and read it."""
        try:
            _, err = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.terminate()
            _, err = self.popen.communicate(timeout=10)
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-2000:]}")
        return read_collapsed(self.out, markers)
