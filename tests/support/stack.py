"""The real processes (api, relay, worker) started as subprocesses with the compose commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.infra import free_port

CONVEYOR = str(Path(sys.executable).with_name("conveyor"))
REPOSITORY = Path(__file__).resolve().parents[2]
TERMINAL = frozenset({"succeeded", "dead", "cancelled"})
PORT_ATTEMPTS = 3


@dataclass
class Process:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    # Where this test's part of the log begins: a shared stack's processes outlive a test.
    log_offset: int = 0

    def start(self) -> Process:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        """Signal the whole process group: a Dramatiq worker is a parent with forked children."""
        if self.alive():
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the main process only (Dramatiq's parent passes it on to its children: a
        second SIGTERM would mean "kill now" to them); SIGKILL the group after `timeout`."""
        self.terminate()
        return self.wait_stopped(timeout)

    def terminate(self) -> None:
        """SIGTERM the main process, without waiting (see `stop`)."""
        if self.popen is not None and self.alive():
            self.popen.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float) -> int | None:
        """Wait for the process to exit; SIGKILL the group after `timeout`."""
        if self.popen is None:
            return None
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait(10)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL every process of the group at once: no shutdown hook runs."""
        if self.alive():
            self.signal_group(signal.SIGKILL)
            assert self.popen is not None
            self.popen.wait(10)

    def log(self) -> str:
        """What the process logged since the test began (its whole log, for a stack of its own)."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")


@dataclass
class Stack:
    """api + relay + worker(s), each a subprocess running the same command as compose does."""

    workdir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    processes: dict[str, Process] = field(default_factory=dict)
    # Serve the API with the diagnostics tasks accepted over HTTP (tests/support/diagnostic_api.py),
    # for the suites that post them; Conveyor's own API never accepts them.
    diagnostics_over_http: bool = False
    # The processes `start_all` started, as they were started: `restore` brings them back.
    canonical: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    # Log sizes when the current test began, by process name (see `begin_test`).
    log_marks: dict[str, int] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        """A client of this stack's API, with the run's key (every scope) unless given another."""
        headers = {
            "authorization": f"Bearer {key or self.env.get('CONVEYOR_KEY', '')}",
            **kwargs.pop("headers", {}),
        }
        return httpx.Client(base_url=self.base_url, timeout=10.0, headers=headers, **kwargs)

    def _process(
        self, name: str, args: list[str], env: dict[str, str] | None = None, command: list[str] | None = None
    ) -> Process:
        merged = {**self.env, **(env or {})}
        log_path = self.workdir / f"{name}.log"
        argv = [*(command or [CONVEYOR]), *args]
        process = Process(name, argv, log_path, merged, log_offset=self.log_marks.get(name, 0))
        self.processes[name] = process
        return process.start()

    def start_api(self, env: dict[str, str] | None = None) -> Process:
        """The API on a free port; another free port if something took this one meanwhile."""
        command, args = [CONVEYOR, "api"], ["--host", "127.0.0.1"]
        if self.diagnostics_over_http:
            command = [sys.executable, "-m", "tests.support.diagnostic_api"]
            env = {"PYTHONPATH": str(REPOSITORY), "DIAGNOSTIC_TASKS": "true", **(env or {})}
        for _ in range(PORT_ATTEMPTS):
            process = self._process("api", [*args, "--port", str(self.port)], env, command)
            if not self._lost_its_port(process):
                return process
            self.port = free_port()
        raise AssertionError(f"api found no free port in {PORT_ATTEMPTS} attempts:\n{process.log()}")

    @staticmethod
    def _lost_its_port(process: Process, seconds: float = 15.0) -> bool:
        """Whether the API exited because its port was taken (a port free when picked is not
        reserved: another process on the machine may bind it first)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and process.alive():
            log = process.log()
            if "Uvicorn running on" in log or "address already in use" in log:
                break
            time.sleep(0.05)
        if "address already in use" not in process.log():
            return False
        process.stop(timeout=5)
        process.log_path.unlink(missing_ok=True)
        return True

    def start_relay(self, name: str = "relay", env: dict[str, str] | None = None) -> Process:
        return self._process(name, ["relay"], env)

    def start_worker(
        self,
        name: str = "worker",
        *,
        processes: int = 1,
        threads: int = 4,
        env: dict[str, str] | None = None,
    ) -> Process:
        args = ["worker", "--processes", str(processes), "--threads", str(threads)]
        return self._process(name, args, env)

    def start_all(self) -> Stack:
        self.start_api()
        self.start_relay()
        self.start_worker()
        self.canonical = {name: (p.argv, p.env) for name, p in self.processes.items()}
        self.wait_ready()
        return self

    # -- one stack shared by many tests (tests/conftest.py) ---------------------------------

    def changed(self) -> list[str]:
        """The processes of `start_all` that are gone, or were started again otherwise."""
        return [
            name
            for name, started in self.canonical.items()
            if (p := self.processes.get(name)) is None or not p.alive() or (p.argv, p.env) != started
        ]

    def restore(self, restart: Iterable[str] = (), between: Callable[[], None] = lambda: None) -> None:
        """Stop what a test added (a second worker, a relay of its own); start again what it
        stopped, killed or started with other settings, and the processes named in `restart`;
        `between` runs once those are stopped and before they start again."""
        self.begin_test()
        again = set(self.changed()) | set(restart)
        stopping = [p for name, p in self.processes.items() if name not in self.canonical or name in again]
        for process in stopping:
            process.terminate()
        for process in stopping:
            process.wait_stopped(timeout=15)
        for name in [n for n in self.processes if n not in self.canonical]:
            del self.processes[name]
        between()
        starters = {"api": self.start_api, "relay": self.start_relay, "worker": self.start_worker}
        for name in sorted(again, key=list(self.canonical).index):
            starters[name]()
            process = self.processes[name]
            self.canonical[name] = (process.argv, process.env)

    def begin_test(self) -> None:
        """From here on, each process's `log()` holds only what it logs during this test."""
        self.log_marks = {path.stem: path.stat().st_size for path in self.workdir.glob("*.log")}
        for name, process in self.processes.items():
            process.log_offset = self.log_marks.get(name, 0)

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        with self.client() as client:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    response = client.get("/health/ready")
                    last = response.json()
                    if response.status_code == 200:
                        return dict(last)
                except httpx.HTTPError as error:
                    last = repr(error)
                time.sleep(0.2)
        raise AssertionError(f"stack not ready after {timeout}s: {last}\n{self.logs()}")

    def wait_api(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    if client.get("/health/live").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise AssertionError(f"api not live after {timeout}s\n{self.logs()}")

    def _check_alive(self) -> None:
        for process in self.processes.values():
            if process.popen is not None and process.popen.poll() is not None and process.name == "api":
                raise AssertionError(f"{process.name} exited early:\n{process.log()[-4000:]}")

    def post_job(self, task: str, payload: dict[str, Any], **extra: Any) -> str:
        with self.client() as client:
            response = client.post("/api/v1/jobs", json={"task": task, "payload": payload, **extra})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        with self.client() as client:
            response = client.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_for(
        self, job_ids: Iterable[str], states: Iterable[str] = TERMINAL, timeout: float = 60.0
    ) -> dict[str, dict[str, Any]]:
        """Poll until every job is in one of `states`; the jobs as the API shows them."""
        wanted = set(states)
        pending = list(job_ids)
        done: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while pending and time.monotonic() < deadline:
                still = []
                for job_id in pending:
                    body = client.get(f"/api/v1/jobs/{job_id}").json()
                    if body.get("state") in wanted:
                        done[job_id] = body
                    else:
                        still.append(job_id)
                pending = still
                if pending:
                    time.sleep(0.1)
        if pending:
            raise AssertionError(
                f"{len(pending)} jobs not in {sorted(wanted)} after {timeout}s, e.g. "
                f"{self.job(pending[0])}\n{self.logs()}"
            )
        return done

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {name} ---\n{process.log()[-tail:]}" for name, process in self.processes.items()
        )

    def stop(self) -> None:
        """Stop every process at once (each shuts down on its own), then wait for them all."""
        processes = list(self.processes.values())
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait_stopped(timeout=15)
