"""What every benchmark needs: scratch databases, vhosts and Redis dbs, child processes, readings.

Everything here talks to 127.0.0.1 only. Each process a benchmark starts runs in a session of
its own and is stopped by its process-group id, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import psutil
import psycopg

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
VENV_BIN = Path(sys.executable).parent
CONVEYOR = str(VENV_BIN / "conveyor")
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BASE = PG_ADMIN.rsplit("/", 1)[0]
AMQP_BASE = os.environ.get("BENCH_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
MIB = 1024 * 1024

# The payload every system gets for one job: the shape of Conveyor's `echo` task.
ECHO_TASK = "app.tasks.example.echo"
ECHO_PAYLOAD = {"message": "bench"}


# -- scratch infrastructure ------------------------------------------------------------------


def database_url(database: str) -> str:
    return f"{PG_BASE.replace('postgresql://', 'postgresql+psycopg://', 1)}/{database}"


def libpq_url(database: str) -> str:
    return f"{PG_BASE}/{database}"


def broker_url(vhost: str) -> str:
    """The vhost on every node of BENCH_AMQP_BASE (`;`-separated for a cluster)."""
    return ";".join(f"{base.rstrip('/')}/{quote(vhost, safe='')}" for base in AMQP_BASE.split(";"))


def pg_connect(url: str, timeout: float = 120.0) -> psycopg.Connection[tuple[object, ...]]:
    """Connect, waiting while the shared server has no free connection slot or is restarting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


class Query:
    """One autocommit connection that reconnects when the shared server drops it (tests restart it)."""

    def __init__(self, url: str, patience: float = 120.0) -> None:
        self.url = url
        self.patience = patience
        self.conn: psycopg.Connection[tuple[object, ...]] | None = None
        self.backend_pid = -1

    def all(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + self.patience
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = pg_connect(self.url)
                    pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()
                    self.backend_pid = int(pid[0]) if pid else -1  # type: ignore[call-overload]
                return [tuple(row) for row in self.conn.execute(sql, params).fetchall()]
            except psycopg.OperationalError:
                self.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def one(self, sql: str, params: tuple[object, ...] = ()) -> tuple[Any, ...]:
        rows = self.all(sql, params)
        return rows[0] if rows else ()

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            self.conn = None

    def __enter__(self) -> Query:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def migrate(env: dict[str, str], cwd: Path, attempts: int = 3) -> None:
    """`conveyor migrate` on the scratch database (retried: the shared server may be restarting)."""
    for attempt in range(1, attempts + 1):
        done = subprocess.run(
            [CONVEYOR, "migrate"], env=env, cwd=cwd, capture_output=True, text=True, timeout=180
        )
        if done.returncode == 0:
            return
        if attempt == attempts:
            raise RuntimeError(f"conveyor migrate failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        time.sleep(3.0)


class WaitSampler:
    """Samples what the PostgreSQL backends of one database are doing, from pg_stat_activity.

    An active backend with no wait event is on the CPU; IO:WALSync is a commit's fsync;
    LWLock:WALWrite is waiting for another backend's WAL flush; Lock:object on a database
    is the cluster-wide lock every NOTIFYing transaction takes at commit.
    """

    QUERY = """
        SELECT state, coalesce(wait_event_type || ':' || wait_event, 'CPU (no wait event)'), left(query, 160)
        FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()
    """

    def __init__(self, database: str, interval: float = 0.02) -> None:
        self.database = database
        self.interval = interval
        self.samples = 0
        self.active: dict[str, int] = {}
        self.states: dict[str, int] = {}
        self.statements: dict[str, int] = {}
        self._names = statement_names()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> WaitSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        with Query(libpq_url(self.database), patience=5.0) as query:
            while not self._stop.wait(self.interval):
                try:
                    rows = query.all(self.QUERY, (self.database,))
                except psycopg.Error:
                    continue
                self.samples += 1
                for state, wait, text in rows:
                    self.states[str(state)] = self.states.get(str(state), 0) + 1
                    if state == "active":
                        self.active[str(wait)] = self.active.get(str(wait), 0) + 1
                        head = _head(str(text or ""))
                        name = self._names.get(head, head[:40] if len(head) < 20 else "other")
                        self.statements[name] = self.statements.get(name, 0) + 1

    def stop(self) -> dict[str, float]:
        """Mean backends per state, and the share of active time per wait event."""
        self._stop.set()
        self._thread.join(10)
        n = max(1, self.samples)
        busy = max(1, sum(self.active.values()))
        summary = {f"backends {k} (mean)": v / n for k, v in sorted(self.states.items())}
        ranked = sorted(self.active.items(), key=lambda kv: -kv[1])
        summary |= {f"active: {k} (share)": v / busy for k, v in ranked}
        by_statement = sorted(self.statements.items(), key=lambda kv: -kv[1])[:8]
        summary |= {f"active in statement {k} (share)": v / busy for k, v in by_statement}
        return summary


def _head(text: str) -> str:
    """The start of a statement, its placeholders (psycopg's and the server's) made alike."""
    return re.sub(r"%\(\w+\)s|\$\d+", "?", " ".join(text.split()))[:80]


def statement_names() -> dict[str, str]:
    """The ledger's named statements by how their text begins (what pg_stat_activity shows)."""
    try:
        from app.ledger import queries
    except ImportError:
        return {}
    return {
        _head(value): name.lower()
        for name, value in vars(queries).items()
        if name.isupper() and isinstance(value, str)
    }


def drop_database(name: str) -> None:
    with pg_connect(PG_ADMIN) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_database(name: str) -> None:
    drop_database(name)
    with pg_connect(PG_ADMIN) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def rabbitmqctl(*args: str, attempts: int = 10) -> None:
    """Run rabbitmqctl, waiting out a broker that is restarting (the fault tests restart it)."""
    # BENCH_RABBITMQCTL: another command line for it (a cluster's node and cookie, bench/cluster.py).
    exe = shlex.split(os.environ.get("BENCH_RABBITMQCTL", "")) or [
        shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    ]
    for attempt in range(attempts):
        try:
            subprocess.run([*exe, "-q", *args], check=True, capture_output=True, timeout=120)
            return
        except subprocess.CalledProcessError as error:
            output = (error.stderr or b"") + (error.stdout or b"")
            if b"does not exist" in output or attempt == attempts - 1:
                raise
            time.sleep(3.0)


def delete_vhost(name: str) -> None:
    try:
        rabbitmqctl("delete_vhost", name)
    except subprocess.CalledProcessError as error:
        output = (error.stderr or b"") + (error.stdout or b"")
        if b"does not exist" not in output:
            print(f"could not delete vhost {name}: {output!r}", file=sys.stderr)


def create_vhost(name: str) -> None:
    delete_vhost(name)
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")


@contextmanager
def scratch_vhost(name: str, keep: bool = False) -> Iterator[str]:
    """A vhost of the benchmark's own, deleted afterwards; yields its broker URL."""
    create_vhost(name)
    try:
        yield broker_url(name)
    finally:
        if not keep:
            delete_vhost(name)


@contextmanager
def scratch_redis(keep: bool = False) -> Iterator[str]:
    """A db number of the benchmark's own on the shared Redis (127.0.0.1:6379, the first of 1-15
    that no test run or benchmark holds, as the tests take theirs), emptied afterwards (only it);
    yields its broker URL."""
    sys.path.insert(0, str(ROOT))
    from tests.support import redis_db

    db = redis_db.claim_db()
    try:
        yield redis_db.url(db)
    finally:
        if not keep:
            redis_db.release_db(db)


def redis_server() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if p.info.get("name") == "redis-server"]


def broker_server(url: str) -> Callable[[], list[psutil.Process]]:
    """The processes of the broker that `url` names, for a CpuMeter."""
    return redis_server if url.startswith("redis://") else rabbitmq_server


def queue_depth(url: str, queue: str, patience: float = 60.0) -> int:
    """Messages ready in a queue (a passive declare: creates nothing); waits out a broker restart."""
    import pika
    import pika.exceptions

    deadline = time.monotonic() + patience
    while True:
        try:
            connection = pika.BlockingConnection([pika.URLParameters(u) for u in url.split(";")])
        except pika.exceptions.AMQPConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
            continue
        try:
            frame = connection.channel().queue_declare(queue=queue, passive=True)
            return int(frame.method.message_count)
        finally:
            connection.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def work_dir(prefix: str) -> Path:
    """A fresh directory for logs and profiles; also the children's cwd, so no `.env` leaks in."""
    base = Path(os.environ.get("BENCH_OUT", tempfile.gettempdir())) / "conveyor-bench"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=base))


# -- child processes -------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process in a session of its own, logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.cwd / f"{self.name}.log"

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited early; its log:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def tree(self) -> list[psutil.Process]:
        """This process and its descendants (a worker's forked children)."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30.0) -> None:
        if self.popen is None or not self.alive():
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(10)
        except ProcessLookupError:
            pass


@dataclass
class Procs:
    """Every process a benchmark started; `stop_all` ends them in reverse order."""

    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> Proc:
        proc = Proc(name, argv, env, cwd).start()
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()


@contextmanager
def processes() -> Iterator[Procs]:
    procs = Procs()
    try:
        yield procs
    finally:
        procs.stop_all()


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child: ours, with `bench/` importable and no stray Conveyor settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "BROKER_", "LOG_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    if os.environ.get("BENCH_QUEUE_TYPE"):
        env["BROKER_QUEUE_TYPE"] = os.environ["BENCH_QUEUE_TYPE"]
    env.update(extra)
    return env


def wait_until(predicate: object, timeout: float, what: str, interval: float = 0.1) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- readings --------------------------------------------------------------------------------


def cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def rss_mib(proc: psutil.Process) -> float:
    try:
        return float(proc.memory_info().rss) / MIB
    except psutil.NoSuchProcess:
        return float("nan")


def busiest(procs: Sequence[psutil.Process]) -> psutil.Process:
    """The process of a tree that used the most CPU: the one doing the work."""
    return max(procs, key=lambda p: cpu_seconds([p]))


def pg_backends(database: str) -> list[psutil.Process]:
    """PostgreSQL backend processes serving one database (their title names it)."""
    pattern = re.compile(rf"^postgres: (?:\S+: )?\S+ {re.escape(database)} ")
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if cmdline and pattern.match(" ".join(cmdline)):
            found.append(proc)
    return found


def backend_clients(query: Query, database: str, clients: dict[str, list[psutil.Process]]) -> dict[int, str]:
    """Which of `clients` (a label and its processes) each backend of `database` serves: the
    client's end of the backend's connection is one of that label's sockets."""
    ports: dict[int, str] = {}
    for label, procs in clients.items():
        for proc in procs:
            try:
                for conn in proc.net_connections(kind="tcp"):
                    if conn.raddr:
                        ports[conn.laddr.port] = label
            except psutil.Error:
                continue
    rows = query.all("SELECT pid, client_port FROM pg_stat_activity WHERE datname = %s", (database,))
    return {int(pid): ports[port] for pid, port in rows if port in ports}


def rabbitmq_server() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if p.info.get("name") == "beam.smp"]


@dataclass
class CpuMeter:
    """CPU seconds of a changing set of processes, between two readings."""

    label: str
    lookup: object
    _start: dict[int, float] = field(default_factory=dict)

    def _read(self) -> dict[int, float]:
        assert callable(self.lookup)
        return {p.pid: cpu_seconds([p]) for p in self.lookup()}

    def start(self) -> None:
        self._start = self._read()

    def elapsed(self) -> float:
        return sum(self.elapsed_by_pid().values())

    def elapsed_by_pid(self) -> dict[int, float]:
        now = self._read()
        # A process born after start counts from zero; one that died is lost (pools keep theirs).
        return {pid: cpu - self._start.get(pid, 0.0) for pid, cpu in now.items()}


def pg_counters(database: str) -> dict[str, int]:
    """Commits, rollbacks and row writes of one database, from pg_stat_database."""
    query = """
        SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, tup_returned
        FROM pg_stat_database WHERE datname = %s
    """
    with pg_connect(PG_ADMIN) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(query, (database,)).fetchone()
    names = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted", "tup_returned")
    return dict(zip(names, (int(v) for v in row or (0,) * 6), strict=True))


class Statements:
    """What each statement of one database cost, per job, from pg_stat_statements: where the
    server loads it (`shared_preload_libraries`); otherwise nothing is read."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.ready = False

    def reset(self) -> Statements:
        try:
            with pg_connect(libpq_url(self.database)) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                conn.execute("SELECT pg_stat_statements_reset()")
            self.ready = True
        except psycopg.Error:
            self.ready = False
        return self

    def read(self, jobs: int, top: int = 14) -> list[tuple[str, float, float, float, float, float]]:
        """(statement, calls, rows, shared buffers, execution ms, planning ms) per job, the most
        called first (planning is 0 unless `pg_stat_statements.track_planning` is on)."""
        if not self.ready:
            return []
        query = """
            SELECT s.query, sum(s.calls), sum(s.rows), sum(s.shared_blks_hit + s.shared_blks_read),
                   sum(s.total_exec_time), sum(s.total_plan_time)
            FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
            WHERE d.datname = %s GROUP BY s.query ORDER BY sum(s.calls) DESC LIMIT %s
        """
        with pg_connect(libpq_url(self.database)) as conn:
            rows = conn.execute(query, (self.database, top)).fetchall()
        n = max(1, jobs)
        return [
            (
                " ".join(str(q).split())[:90],
                float(c) / n,
                float(r) / n,
                float(b) / n,
                float(ms) / n,
                float(p) / n,
            )
            for q, c, r, b, ms, p in rows
        ]


def wal_bytes() -> int:
    """The WAL the whole server has written so far (pg_stat_wal): read before and after a run."""
    with pg_connect(PG_ADMIN) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT wal_bytes FROM pg_stat_wal").fetchone()
    return int(row[0]) if row else 0


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def source_version() -> str:
    """The commit measured, and whether src/ had changes not committed yet (a shared tree)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{sha}" + (f" + uncommitted changes in {len(dirty)} src files" if dirty else "")


def machine() -> str:
    cpu = psutil.cpu_count(logical=True)
    mem = psutil.virtual_memory().total / (1024**3)
    return f"{cpu} cores, {mem:.0f} GiB, Python {sys.version.split()[0]}, {os.uname().sysname}"


# -- output ----------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, readable as plain text too."""
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
            + " |"
        )

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *[line(r) for r in cells[1:]]])


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def verdict(ratio: float | None, target: float) -> str:
    if ratio is None:
        return "n/a"
    return f"{ratio:.2f}x (target >= {target:g}x: {'met' if ratio >= target else 'NOT met'})"


class Measured(Protocol):
    """What a benchmark's result row offers the shared runner."""

    profile: str

    @property
    def rate(self) -> float: ...


R = TypeVar("R", bound=Measured)


def run_systems(
    name: str,
    unit: str,
    systems: Sequence[str],
    run: Callable[[str], R],
    render: Callable[[list[R]], str],
    json_path: Path | None,
    detail: str = "",
) -> list[R]:
    """Run each system once, print the table, the failures and the profiles; one failing
    system (a shared service restarting) spoils only its own row."""
    results: list[R] = []
    failures: list[str] = []
    for system in systems:
        print(f"{name}: {system} ({detail}load {load_average()}) …", file=sys.stderr, flush=True)
        try:
            result = run(system)
        except Exception as error:
            print(f"{name}: {system} FAILED: {error!r}", file=sys.stderr, flush=True)
            failures.append(f"- {system}: FAILED ({type(error).__name__}: {str(error)[:300]})")
            continue
        print(f"{name}: {system}: {result.rate:,.0f} {unit}", file=sys.stderr, flush=True)
        results.append(result)
    print(render(results))
    if failures:
        print("\n".join(["Runs that failed (see their logs under the work directory):", *failures, ""]))
    for result in results:
        if result.profile:
            print(result.profile)
    if json_path:
        rows = [asdict(r) | {"rate": r.rate} for r in results]  # type: ignore[call-overload]
        json_path.write_text(json.dumps(rows, indent=2))
    return results


def make_key(env: dict[str, str], scopes: str = "enqueue") -> str:
    """A key with these scopes in the scratch ledger, made as an operator would: the last line
    `conveyor keys create` prints."""
    made = subprocess.run(
        [CONVEYOR, "keys", "create", f"bench-{os.getpid()}-{time.monotonic_ns()}", "--scopes", scopes],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]
