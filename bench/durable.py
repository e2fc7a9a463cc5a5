"""The PostgreSQL-backed Python queues Conveyor's drain is measured against: PgQueuer, oban-py, Chancy.

    python bench/durable.py                          # 10,000 jobs; pgqueuer, oban, chancy
    python bench/durable.py --jobs 2000 --peers pgqueuer,procrastinate
    python bench/durable.py --setup-only             # only make the venvs

Each peer runs in a venv of its own, bench/.venvs/<peer> (git-ignored), made on first use from
bench/peers/durable/requirements/<peer>.txt (exact pins) and made again when that file
changes. oban-py needs Python >= 3.12: PYTHON312, python3.12/3.13 on the PATH or a pyenv
version are tried, in that order; the others use the Python this runs on.

One run of a peer (bench/peers/durable/durable_common.py): a fresh database `bench_<peer>`,
its schema, --single jobs enqueued one at a time, then the database again from scratch, N
jobs enqueued with the peer's batch API (timed), and ONE worker process started and timed
from its launch until the peer's table shows all N succeeded. The rate "from launch" is the
one to hold beside Conveyor's "jobs/s from launch" in bench/drain.py; a peer that cannot be
set up or fails is reported with its reason, and never stops the caller.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import BENCH_DIR, load_average, machine, table, work_dir

SCRIPTS = BENCH_DIR / "peers" / "durable"
VENVS = Path(os.environ.get("BENCH_VENVS", BENCH_DIR / ".venvs"))
PEERS = ("pgqueuer", "oban", "chancy", "procrastinate")
DEFAULT_PEERS = ("pgqueuer", "oban", "chancy")
LABELS = {"pgqueuer": "PgQueuer", "oban": "oban-py", "chancy": "Chancy", "procrastinate": "Procrastinate"}
MIN_PYTHON = {"oban": (3, 12)}  # every oban-py release from 0.5 on: Requires-Python >= 3.12
DEFAULT_MIN_PYTHON = (3, 11)
SETUP_TIMEOUT = 900.0


class Unavailable(Exception):
    """A peer that cannot be set up here; its message says why."""


@dataclass
class PeerResult:
    peer: str
    jobs: int
    ok: bool
    error: str = ""
    drain_from_launch: float | None = None  # jobs/s, worker spawn -> all N succeeded
    drain_span: float | None = None  # jobs/s, first job started -> last finished (its own timestamps)
    enqueue_bulk: float | None = None  # jobs/s, N jobs in one batch call
    enqueue_single: float | None = None  # jobs/s, one call and transaction each
    worker_cpu_ms: float | None = None
    pg_cpu_ms: float | None = None
    tree_rss_mib: float | None = None
    version: str = ""
    python: str = ""
    settings: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return LABELS.get(self.peer, self.peer)


# -- venvs -----------------------------------------------------------------------------------


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    parts = done.stdout.split()
    return (int(parts[0]), int(parts[1])) if done.returncode == 0 and len(parts) == 2 else None


def _candidates(minimum: tuple[int, int]) -> list[str]:
    base = getattr(sys, "_base_executable", "") or sys.executable
    found = [os.environ.get("PYTHON312", ""), base] if minimum >= (3, 12) else [base]
    found += [shutil.which(name) or "" for name in ("python3.12", "python3.13")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():  # the oldest usable minor (3.12 is what was measured), its newest patch
        versions = [p for p in pyenv.iterdir() if p.name.count(".") == 2 and p.name.split(".")[0] == "3"]
        versions.sort(key=lambda p: (int(p.name.split(".")[1]), -int(p.name.split(".")[2] or 0)))
        found += [str(p / "bin" / "python3") for p in versions]
    return [c for c in found if c]


def interpreter(peer: str) -> str:
    """A Python new enough for the peer, or Unavailable."""
    minimum = MIN_PYTHON.get(peer, DEFAULT_MIN_PYTHON)
    for candidate in _candidates(minimum):
        version = _version_of(candidate)
        if version is not None and version >= minimum:
            return candidate
    wanted = ".".join(map(str, minimum))
    raise Unavailable(f"no Python >= {wanted} found (set PYTHON312, or install it with pyenv)")


def venv_python(peer: str) -> Path:
    """The peer's venv's Python, made or brought up to its pinned requirements first."""
    if peer not in PEERS:
        raise Unavailable(f"unknown peer {peer!r} (known: {', '.join(PEERS)})")
    requirements = SCRIPTS / "requirements" / f"{peer}.txt"
    venv = VENVS / peer
    python = venv / "bin" / "python"
    stamp = venv / ".requirements-sha256"
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    try:
        if not python.exists():
            _run([interpreter(peer), "-m", "venv", str(venv)], f"making the venv of {peer}")
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        _run([*pip, "-r", str(requirements)], f"pip install -r {requirements.name}")
    except subprocess.TimeoutExpired as error:
        raise Unavailable(f"setting up {peer} took over {error.timeout:.0f} s") from error
    stamp.write_text(wanted + "\n")
    return python


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=SETUP_TIMEOUT)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise Unavailable(f"{what} failed: {tail[0][:300]}")


# -- runs ------------------------------------------------------------------------------------


def run(peer: str, jobs: int, single: int, timeout: float) -> PeerResult:
    """One peer's enqueue and drain; every failure comes back as a result with its error."""
    try:
        python = venv_python(peer)
    except Unavailable as why:
        return PeerResult(peer, jobs, ok=False, error=str(why))
    logs = work_dir(f"durable-{peer}")
    argv = [str(python), str(SCRIPTS / f"{peer}_bench.py"), "--n", str(jobs), "--single", str(single)]
    argv += ["--timeout", str(timeout)]
    env = {**os.environ, "DURABLE_LOGS": str(logs), "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)  # only the peer's venv and its script's folder
    stderr = logs / "run.log"
    try:
        with stderr.open("w") as err:
            done = subprocess.run(
                argv, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout + 300, env=env
            )
    except subprocess.TimeoutExpired:
        return PeerResult(peer, jobs, ok=False, error=f"no result after {timeout + 300:.0f} s (see {stderr})")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = stderr.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return PeerResult(
            peer, jobs, ok=False, error=f"exit {done.returncode}: {tail[0][:300]} (see {stderr})"
        )
    return from_json(peer, jobs, json.loads(lines[-1]))


def from_json(peer: str, jobs: int, raw: dict[str, Any]) -> PeerResult:
    return PeerResult(
        peer=peer,
        jobs=jobs,
        ok=bool(raw.get("ok")),
        error=str(raw.get("error") or ("" if raw.get("ok") else "not every job succeeded")),
        drain_from_launch=raw.get("drain_per_s_incl_startup"),
        drain_span=raw.get("drain_per_s_span"),
        enqueue_bulk=raw.get("enqueue_bulk_per_s"),
        enqueue_single=raw.get("enqueue_single_per_s"),
        worker_cpu_ms=raw.get("worker_cpu_ms_per_job"),
        pg_cpu_ms=raw.get("pg_cpu_ms_per_job"),
        tree_rss_mib=raw.get("worker_rss_mib"),
        version=str(raw.get("version", "")),
        python=str(raw.get("python", "")),
        settings=str(raw.get("settings", "")),
        raw=raw,
    )


def render(results: list[PeerResult]) -> str:
    rows = [
        [
            f"{r.label} {r.version}".strip(),
            r.python or "-",
            r.jobs,
            r.drain_from_launch,
            r.drain_span,
            r.enqueue_bulk,
            r.enqueue_single,
            r.worker_cpu_ms,
            r.pg_cpu_ms,
            r.tree_rss_mib,
        ]
        for r in results
        if r.ok
    ]
    headers = [
        "peer",
        "Python",
        "jobs",
        "jobs/s from launch",
        "jobs/s (span)",
        "bulk enqueue jobs/s",
        "single enqueue jobs/s",
        "worker CPU ms/job",
        "PG CPU ms/job",
        "worker tree RSS MiB",
    ]
    lines = [f"## PostgreSQL-backed Python queues: one worker process each ({machine()})", ""]
    lines += [table(headers, rows), ""] if rows else ["(no peer measured)", ""]
    lines += [f"- {r.label}: not measured: {r.error}" for r in results if not r.ok]
    lines += [f"- {r.label} settings: {r.settings}" for r in results if r.ok]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[PeerResult]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs to drain (default 10000)")
    parser.add_argument("--single", type=int, default=2_000, help="jobs enqueued one by one (default 2000)")
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS), help=f"comma-separated, of {PEERS}")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per drain")
    parser.add_argument("--setup-only", action="store_true", help="only make the venvs")
    args = parser.parse_args(argv)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    results = []
    for peer in peers:
        print(f"durable: {peer} ({args.jobs} jobs, load {load_average()}) …", file=sys.stderr, flush=True)
        if args.setup_only:
            try:
                print(f"{peer}: {venv_python(peer)}")
            except Unavailable as why:
                print(f"{peer}: not set up: {why}")
            continue
        started = time.monotonic()
        result = run(peer, args.jobs, args.single, args.timeout)
        took = time.monotonic() - started
        verdict = f"{result.drain_from_launch or 0:,.0f} jobs/s" if result.ok else f"FAILED: {result.error}"
        print(f"durable: {peer}: {verdict} ({took:.0f} s in all)", file=sys.stderr, flush=True)
        results.append(result)
    if not args.setup_only:
        print(render(results))
    return results


if __name__ == "__main__":
    main()
