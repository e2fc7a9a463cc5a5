"""A Debian machine with none of the services, in a container: the python:3.11-slim image
(Debian bookworm; the stand-in from deploy/offline-images when no registry answers) with a
copy of the checkout, `make` added, and nothing else. `make dev` runs in it as root, so
scripts/services.sh installs PostgreSQL, RabbitMQ and Redis from Debian's packages."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field

from tests.compose.engine import REPO, build_offline_images, docker_env, registry_answers

IMAGE = "python:3.11-slim"
SERVICES = ("pg_ctlcluster", "rabbitmq-server", "redis-server")
DEV_LOG = "/tmp/make-dev.log"
# pip, three Debian packages, migrations: a few minutes on 2 cores.
MAKE_DEV_SECONDS = 1200
KEY = re.compile(r"^\s*key\s+(cvk_\S+)", re.MULTILINE)

# Runs inside the machine with its own Python: the README's first example, POST then GET.
FIRST_EXAMPLE = """
import json, sys, time, urllib.request
key = sys.argv[1]
def call(method, path, body=None):
    request = urllib.request.Request("http://127.0.0.1:8000" + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.load(response)
email = {"to": "ada@example.com", "subject": "Welcome", "body": "Hello!"}
status, job = call("POST", "/api/v1/emails", email)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    got, current = call("GET", job["status_url"])
    if current["state"] in ("succeeded", "dead", "cancelled"):
        break
    time.sleep(0.5)
print(json.dumps({"post_status": status, "get_status": got, "state": current["state"]}))
"""


def docker(*args: str, timeout: float = 120, check: bool = True, stdin: bytes | None = None) -> str:
    done = subprocess.run(
        ["docker", *args], env=docker_env(), input=stdin, capture_output=True, timeout=timeout
    )
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} …: exit {done.returncode}\n{out[-3000:]}")
    return out


@dataclass
class BareMachine:
    name: str = field(default_factory=lambda: f"conveyor-bare-{secrets.token_hex(4)}")

    def start(self) -> BareMachine:
        docker("run", "-d", "--name", self.name, IMAGE, "sleep", "infinity")
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        tarball = subprocess.run(
            ["tar", "--null", "-T", "-", "-cf", "-"], cwd=REPO, input=files, capture_output=True, check=True
        ).stdout
        docker("exec", "-i", self.name, "sh", "-c", "mkdir -p /src && tar -C /src -xf -", stdin=tarball)
        return self

    def sh(self, script: str, timeout: float = 600, check: bool = True) -> str:
        return docker("exec", self.name, "sh", "-c", script, timeout=timeout, check=check)

    def installed_services(self) -> list[str]:
        return [s for s in SERVICES if self.sh(f"command -v {s} || true").strip()]

    def add_make(self) -> None:
        """A bare Debian has no make: the one thing the README asks for besides Python."""
        self.sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make >/dev/null")

    def start_make_dev(self) -> None:
        docker("exec", "-d", self.name, "sh", "-c", f"cd /src && make dev > {DEV_LOG} 2>&1")

    def log(self) -> str:
        return self.sh(f"cat {DEV_LOG} 2>/dev/null || true", check=False)

    def wait_for_key(self, timeout: float) -> str:
        """The key `make dev` printed, once the API listens."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            # `conveyor dev` prints the key a moment before the API listens.
            if (found := KEY.search(log)) and "Uvicorn running on" in log:
                return found.group(1)
            if "make: ***" in log:
                raise AssertionError(f"make dev failed:\n{log[-4000:]}")
            time.sleep(3)
        raise AssertionError(f"make dev printed no key within {timeout:.0f} s:\n{self.log()[-4000:]}")

    def first_example(self, key: str) -> dict[str, object]:
        out = docker("exec", self.name, "python3", "-c", FIRST_EXAMPLE, key, timeout=180)
        result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
        return result

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False, timeout=120)


def ensure_image() -> None:
    """The bare machine's image: pulled where a registry answers, else the offline stand-in."""
    if docker("image", "inspect", IMAGE, check=False).startswith("[]"):
        pulled = (
            registry_answers()
            and subprocess.run(["docker", "pull", IMAGE], capture_output=True).returncode == 0
        )
        if not pulled:
            build_offline_images({"python": IMAGE})


class BareRun(threading.Thread):
    """The whole check, from the bare machine to the README's first example, in a thread: it is
    minutes of apt and pip that the compose package starts in the background
    (tests/compose/conftest.py) while the rest of the suite runs; the test reads what it saw."""

    def __init__(self) -> None:
        super().__init__(name="bare-machine", daemon=True)
        self.before: list[str] | None = None
        self.after: list[str] | None = None
        self.example: dict[str, object] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        machine: BareMachine | None = None
        try:
            ensure_image()
            machine = BareMachine().start()
            self.before = machine.installed_services()
            machine.add_make()
            machine.start_make_dev()
            key = machine.wait_for_key(MAKE_DEV_SECONDS)
            self.after = machine.installed_services()
            self.example = machine.first_example(key)
        except BaseException as error:  # read by the test
            self.error = error
        finally:
            if machine is not None:
                machine.remove()
