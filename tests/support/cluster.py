"""A 3-node RabbitMQ cluster on loopback, from the distribution's rabbitmq-server, for one test run.

Everything is its own: AMQP ports 5681-5683, distribution ports 25681-25683, an epmd on port
4381, a cookie, node names (`conveyor-rabbit-N@localhost`), config, plugins (none) and data
under a temporary directory. It refuses to start when one of its ports is taken, and never
touches the RabbitMQ on 5672 that others share. Nodes are stopped (or killed, by the fault
tests) by PID, never by name.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
EPMD_PORT = 4381
AMQP_PORTS = (5681, 5682, 5683)
DIST_PORTS = (25681, 25682, 25683)
START_SECONDS = 90.0


def missing() -> str | None:
    """None when rabbitmq-server is installed; else what to install."""
    if not SERVER.exists() or not CTL.exists() or not shutil.which("epmd"):
        return "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
    return None


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@dataclass
class Node:
    index: int
    home: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"conveyor-rabbit-{self.index + 1}@localhost"

    @property
    def port(self) -> int:
        return AMQP_PORTS[self.index]

    def url(self, vhost: str = "/") -> str:
        from urllib.parse import quote

        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def start(self) -> None:
        log = (self.home / "server.out").open("ab")
        self.popen = subprocess.Popen(
            [str(SERVER)], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the node's process group: no goodbye to the cluster."""
        if self.popen is not None and self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(30)

    def stop(self) -> None:
        if self.popen is not None and self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    root: Path
    cookie: str = field(default_factory=lambda: secrets.token_hex(16))
    nodes: list[Node] = field(default_factory=list)
    epmd: subprocess.Popen[bytes] | None = None

    def url(self, vhost: str = "/", order: tuple[int, ...] = (0, 1, 2)) -> str:
        """A `;`-separated BROKER_URL over the nodes, in `order`."""
        return ";".join(self.nodes[i].url(vhost) for i in order)

    def ctl(self, node: int, *args: str, timeout: float = 60.0) -> str:
        done = subprocess.run(
            [str(CTL), "-q", "-n", self.nodes[node].name, "--erlang-cookie", self.cookie, *args],
            env=self.nodes[node].env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def start(self) -> Cluster:
        taken = [p for p in (EPMD_PORT, *AMQP_PORTS, *DIST_PORTS) if port_taken(p)]
        if taken:
            raise RuntimeError(f"the test cluster's ports are taken: {taken}; is another run using them?")
        self.epmd = subprocess.Popen(
            ["epmd", "-port", str(EPMD_PORT), "-address", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for index in range(3):
            self.nodes.append(self._node(index))
        for node in self.nodes:
            node.start()
        for index in range(3):
            self.wait_node(index)
        for index in (1, 2):
            self.ctl(index, "stop_app")
            self.ctl(index, "join_cluster", self.nodes[0].name)
            self.ctl(index, "start_app")
        return self

    def _node(self, index: int) -> Node:
        home = self.root / f"node{index + 1}"
        home.mkdir(parents=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{AMQP_PORTS[index]}\n"
            "loopback_users = none\n"
            "disk_free_limit.absolute = 50MB\n"
            "vm_memory_high_watermark.relative = 0.2\n"
        )
        (home / "enabled_plugins").write_text("[].\n")
        (home / "rabbitmq-env.conf").write_text("")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "ERL_EPMD_PORT": str(EPMD_PORT),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": f"conveyor-rabbit-{index + 1}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(AMQP_PORTS[index]),
            "RABBITMQ_DIST_PORT": str(DIST_PORTS[index]),
            "RABBITMQ_BASE": str(home),
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_PID_FILE": str(home / "rabbit.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        return Node(index, home, env)

    def wait_node(self, index: int, timeout: float = START_SECONDS) -> None:
        node = self.nodes[index]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.alive():
                raise RuntimeError(f"{node.name} exited:\n{self.log(index)}")
            try:
                with socket.create_connection(("127.0.0.1", node.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"{node.name} did not listen within {timeout:.0f} s:\n{self.log(index)}")

    def restart(self, index: int) -> None:
        """Start a stopped or killed node again: it rejoins the cluster it belongs to."""
        self.nodes[index].start()
        self.wait_node(index)

    def add_vhost(self, vhost: str) -> None:
        self.ctl(0, "add_vhost", vhost)
        self.ctl(0, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def leader(self, queue: str, vhost: str) -> int:
        """The index of the node that leads a quorum queue."""
        out = self.ctl(0, "list_queues", "-p", vhost, "name", "leader", "--no-table-headers")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return [n.name for n in self.nodes].index(parts[1])
        raise LookupError(f"no leader for {queue!r} in {out!r}")

    def log(self, index: int) -> str:
        path = self.nodes[index].home / "server.out"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.kill()
            self.epmd.wait(10)
