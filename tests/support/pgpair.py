"""A PostgreSQL primary and its synchronous standby, of this test run's own (never the shared 5432).

Built from the Debian PostgreSQL binaries (the newest in /usr/lib/postgresql, or `PG_BIN`):
`initdb` for the primary, `pg_basebackup -R` for the standby, each on a port of its own, their
data in a temporary directory. A commit returns
only once the standby has it (`synchronous_standby_names`), so a job that got a 202 outlives
the primary. As root, every binary runs as the `postgres` user (initdb refuses root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg


def _binaries() -> Path:
    """PG_BIN, else the newest Debian PostgreSQL's binaries (15 on this machine's Debian 12)."""
    if given := os.environ.get("PG_BIN"):
        return Path(given)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


BIN = _binaries()
PORTS = (5441, 5442)
STANDBY_NAME = "conveyor_standby"
DATABASE = "conveyor_failover"
START_SECONDS = 60


class PairUnavailable(RuntimeError):
    """Raised when the pair cannot be built here: binaries missing, or its ports taken."""


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Node:
    name: str
    port: int
    data: Path

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pid(self) -> int | None:
        """The postmaster's PID, from its pid file (None when it is not running)."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


@dataclass
class PgPair:
    """`start()` builds and starts both; `primary` and `standby` swap when `promote()` runs."""

    ports: tuple[int, int] = PORTS
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="conveyor-pgpair-")))
    nodes: list[Node] = field(default_factory=list)
    primary_index: int = 0

    @property
    def primary(self) -> Node:
        return self.nodes[self.primary_index]

    @property
    def standby(self) -> Node:
        return self.nodes[1 - self.primary_index]

    def url(self, database: str = DATABASE, form: str = "sqlalchemy") -> str:
        """The multi-host DATABASE_URL of both nodes, in SQLAlchemy's form or libpq's."""
        first, second = self.ports
        if form == "sqlalchemy":
            hosts = f"host=127.0.0.1:{first}&host=127.0.0.1:{second}"
        else:
            hosts = f"host=127.0.0.1,127.0.0.1&port={first},{second}"
        return f"postgresql+psycopg://postgres@/{database}?{hosts}&target_session_attrs=read-write"

    def libpq_url(self, database: str = DATABASE) -> str:
        first, second = self.ports
        return (
            f"postgresql://postgres@/{database}?host=127.0.0.1,127.0.0.1&port={first},{second}"
            "&target_session_attrs=read-write&connect_timeout=3"
        )

    # -- building ---------------------------------------------------------------------------

    def start(self) -> PgPair:
        missing = [
            tool for tool in ("initdb", "pg_ctl", "pg_basebackup", "postgres") if not (BIN / tool).exists()
        ]
        if missing:
            raise PairUnavailable(f"PostgreSQL binaries missing in {BIN}: {', '.join(missing)}")
        taken = [port for port in self.ports if port_taken(port)]
        if taken:
            raise PairUnavailable(f"ports {taken} are taken: the pair will not share a server")
        self._own(self.root)
        first, second = self.ports
        primary, standby = Node("a", first, self.root / "a"), Node("b", second, self.root / "b")
        self.nodes = [primary, standby]
        self._run(
            "initdb", "-D", str(primary.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        self._configure(primary)
        self._pg_ctl(primary, "start")
        self._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
            "-D", str(standby.data), "-R", "-X", "stream", "--no-sync", "--checkpoint=fast",
        )  # fmt: skip
        self._follow(standby, primary)
        self._pg_ctl(standby, "start")
        self.wait_synchronous()
        with psycopg.connect(primary.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        return self

    def _configure(self, node: Node) -> None:
        settings = {
            "port": str(node.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "hot_standby": "on",
            "synchronous_commit": "on",
            "synchronous_standby_names": f"'{STANDBY_NAME}'",
            "max_connections": "100",
            "shared_buffers": "32MB",
            "fsync": "off",  # the processes die in these tests, never the machine
            "log_min_messages": "warning",
        }
        with (node.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# the test pair\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))

    def _follow(self, node: Node, primary: Node) -> None:
        """Settings of a standby: its own port, its name for synchronous replication; and, once
        promoted, a primary that waits for no standby (it has none left)."""
        with (node.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"port = {node.port}\n"
                f"primary_conninfo = 'host=127.0.0.1 port={primary.port} user=postgres"
                f" application_name={STANDBY_NAME}'\n"
                "synchronous_standby_names = ''\n"
            )

    def wait_synchronous(self, timeout: float = START_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with psycopg.connect(self.primary.admin_url, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_replication"
                    " WHERE application_name = %s AND sync_state = 'sync'",
                    (STANDBY_NAME,),
                ).fetchone()
            if row is not None and row[0] == 1:
                return
            if time.monotonic() > deadline:
                raise PairUnavailable(f"the standby never became synchronous:\n{self.logs()}")
            time.sleep(0.2)

    # -- faults -----------------------------------------------------------------------------

    def stop_primary(self) -> None:
        """The primary gone at once, as a crash leaves it: `pg_ctl stop -m immediate`."""
        self._pg_ctl(self.primary, "stop", "-m", "immediate")

    def promote(self) -> Node:
        """Promote the standby (`pg_ctl promote`, waiting until it takes writes); it is the
        primary from now on. The old primary is left stopped."""
        self._pg_ctl(self.standby, "promote")
        self.primary_index = 1 - self.primary_index
        return self.primary

    def rebuild_standby(self) -> None:
        """Make the stopped old primary a synchronous standby of the new one again (a fresh
        `pg_basebackup`, cheaper here than `pg_rewind`), so the pair can fail over again."""
        old, primary = self.standby, self.primary
        if old.pid() is not None:
            self._pg_ctl(old, "stop", "-m", "immediate")
        shutil.rmtree(old.data)
        self._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
            "-D", str(old.data), "-R", "-X", "stream", "--no-sync", "--checkpoint=fast",
        )  # fmt: skip
        self._follow(old, primary)
        self._pg_ctl(old, "start")
        with psycopg.connect(primary.admin_url, autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
            conn.execute("SELECT pg_reload_conf()")
        self.wait_synchronous()

    # -- stopping ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop both servers (pg_ctl, then their PIDs), and delete their data."""
        for node in self.nodes:
            if node.pid() is None:
                continue
            try:
                self._pg_ctl(node, "stop", "-m", "immediate")
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pid = node.pid()
                if pid is not None and _is_its_postmaster(pid, node):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name} ---\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.root.glob("*.log"))
        )

    # -- running the binaries ---------------------------------------------------------------

    def _pg_ctl(self, node: Node, action: str, *extra: str) -> None:
        log = self.root / f"{node.name}.log"
        self._run(
            "pg_ctl", "-D", str(node.data), "-l", str(log), "-w", "-t", str(START_SECONDS), action, *extra
        )

    def _run(self, tool: str, *args: str) -> None:
        as_postgres = os.geteuid() == 0
        result = subprocess.run(
            [str(BIN / tool), *args],
            cwd=self.root,
            user="postgres" if as_postgres else None,
            env={**os.environ, "PGHOST": str(self.root), "LC_ALL": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=START_SECONDS + 30,
            check=False,
        )
        if result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)

    @staticmethod
    def _own(path: Path) -> None:
        """The data's directory belongs to whoever runs the servers: postgres, when we are root."""
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o700)


def _is_its_postmaster(pid: int, node: Node) -> bool:
    """Whether `pid` is still this node's server (a stale pid file may name another process)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(command) and command[0].endswith(b"postgres") and str(node.data).encode() in command
