"""Soak: post jobs at a steady rate while workers are SIGKILLed and RabbitMQ and PostgreSQL
restart on a schedule; then count, Jepsen-style, what became of every accepted job.

    .venv/bin/python bench/soak.py [--duration 180] [--rate 20] [--faults worker-sigkill] [--json out.json]
    .venv/bin/python bench/soak.py --cluster --pg-pair --kill-every 18 [...]

It runs the real processes (api, relay, two supervised workers) against a database, a vhost
and an API key of its own, restarts the machine's real RabbitMQ and PostgreSQL (each brought
back in a `finally`; `--faults worker-sigkill` leaves them alone), and exits 1 if any accepted
job was lost, any effect happened twice, or it accepted far fewer jobs than its rate and
duration promise (a soak that stored nothing proves nothing). Not part of CI: it restarts
shared services and takes minutes.

With `--cluster` the broker is a 3-node RabbitMQ cluster of the soak's own (ports 5681-5683;
tests/support/cluster.py) with quorum queues, and its broker fault is `rabbit-node-kill` (a
node SIGKILLed, started again after `--node-down` seconds); with `--pg-pair` as well, nothing
the soak does stops or restarts the shared services on 5432/5672/6379. `--kill-every S`
SIGKILLs a worker every S seconds on a thread of its own, alongside the scheduled faults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import faults, infra, keys, outages  # noqa: E402
from tests.support.cluster import Cluster  # noqa: E402
from tests.support.pgpair import PgPair  # noqa: E402
from tests.support.stack import CONVEYOR, Stack  # noqa: E402

FAULTS = ("worker-sigkill", "rabbitmq-restart", "postgres-restart")
# With --pg-pair: the primary stopped (-m immediate), the standby promoted, the old primary
# made a standby again.
PAIR_FAULTS = ("worker-sigkill", "rabbitmq-restart", "postgres-failover")
PAIR_FAILOVER_SECONDS = "10"
# With --cluster: one node of the soak's own 3-node cluster SIGKILLed, then started again.
CLUSTER_FAULTS = ("worker-sigkill", "rabbit-node-kill")
SOAK_VHOST = "conveyor_soak"
SOAK_ENV = {
    "ENVIRONMENT": "test",
    "DIAGNOSTIC_TASKS": "true",
    "LEASE_SECONDS": "5",
    "HEARTBEAT_SECONDS": "1",
    "RETRY_BACKOFF_BASE": "0.2",
    "RETRY_BACKOFF_MAX": "2",
    "RELAY_SWEEP_SECONDS": "0.5",
    "REPUBLISH_AFTER_SECONDS": "30",
    "WORKER_SHUTDOWN_SECONDS": "5",
    "WORKER_METRICS_PORT": "0",
    "DB_POOL_SIZE": "3",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
}


@dataclass
class Fault:
    kind: str
    injected_at: float  # wall clock, comparable with the ledger's timestamps (same host)
    restored_at: float = 0.0
    detail: str = ""


@dataclass
class Report:
    duration_s: float
    rate_per_s: float
    accepted: int = 0
    refused_during_outages: dict[str, int] = field(default_factory=dict)
    succeeded: int = 0
    dead: int = 0
    cancelled: int = 0
    lost: int = 0
    missing_from_ledger: int = 0
    stuck_non_terminal: int = 0
    duplicated_effects: int = 0
    executions: int = 0
    re_executions: int = 0
    max_non_terminal_s: float = 0.0
    p99_accept_to_done_s: float = 0.0
    worker_restarts: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    by_kind: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    # Accepted jobs below this share of rate times duration fail the soak: the posting itself broke.
    min_accepted_share: float = 0.5

    @property
    def promised(self) -> int:
        return int(self.rate_per_s * self.duration_s)

    @property
    def too_few(self) -> bool:
        return self.accepted == 0 or self.accepted < self.min_accepted_share * self.promised

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated_effects == 0 and not self.too_few


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of posting and faults")
    parser.add_argument("--rate", type=float, default=20.0, help="jobs posted per second")
    parser.add_argument("--fault-every", type=float, default=25.0, help="seconds between faults")
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="seconds to wait for the end")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--faults",
        default="",
        help=f"comma-separated, injected in turn (default: {', '.join(FAULTS)}; with --pg-pair, "
        f"{', '.join(PAIR_FAULTS)})",
    )
    parser.add_argument(
        "--pg-pair",
        action="store_true",
        help="keep the ledger on a primary and a synchronous standby of the soak's own (ports "
        "5441, 5442; tests/support/pgpair.py), reached through a multi-host DATABASE_URL",
    )
    parser.add_argument(
        "--min-accepted-share",
        type=float,
        default=0.5,
        help="fail when fewer jobs than this share of rate times duration were accepted",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="put the broker on a 3-node RabbitMQ cluster of the soak's own (ports 5681-5683, "
        "quorum queues); its broker fault is rabbit-node-kill",
    )
    parser.add_argument("--node-down", type=float, default=8.0, help="seconds a killed node stays down")
    parser.add_argument(
        "--kill-every",
        type=float,
        default=0.0,
        help="also SIGKILL a worker every this many seconds, on a thread of its own (0: never)",
    )
    args = parser.parse_args()
    possible = fault_kinds(args.cluster, args.pg_pair)
    args.faults = [kind.strip() for kind in args.faults.split(",") if kind.strip()] or list(possible)
    unknown = sorted(set(args.faults) - set(possible))
    if unknown:
        parser.error(f"--faults: unknown {unknown}; choose among {', '.join(possible)}")

    scratch = infra.new_infra()
    infra.create(scratch)
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-soak-"))
    cluster = start_cluster(workdir / "rabbit") if args.cluster else None
    pair = PgPair().start() if args.pg_pair else None
    database_url = pair.url() if pair is not None else scratch.database_url
    broker_url = cluster.url(SOAK_VHOST) if cluster is not None else scratch.broker_url
    env = dict(os.environ) | SOAK_ENV | {"DATABASE_URL": database_url, "BROKER_URL": broker_url}
    if pair is not None:
        env["DB_FAILOVER_SECONDS"] = PAIR_FAILOVER_SECONDS
    if cluster is not None:
        env["BROKER_QUEUE_TYPE"] = "quorum"
    subprocess.run([CONVEYOR, "migrate"], env=env, check=True, capture_output=True, timeout=120)
    env[keys.ENV] = os.environ[keys.ENV] = make_key(env)
    stack = Stack(workdir=workdir, env=env, diagnostics_over_http=True)
    ledger = faults.Ledger(pair.libpq_url() if pair is not None else scratch.libpq_url)
    try:
        report = soak(stack, ledger, args, pair, cluster)
    finally:
        stack.stop()
        if "rabbitmq-restart" in args.faults:
            outages.ensure_rabbitmq()
        if "postgres-restart" in args.faults:
            outages.wait_postgres()
        infra.drop(scratch)
        if pair is not None:
            pair.stop()
        if cluster is not None:
            cluster.stop()
    print_report(report, workdir)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2, default=str))
    return 0 if report.ok else 1


def fault_kinds(cluster: bool, pg_pair: bool) -> tuple[str, ...]:
    """The faults a soak can inject: a cluster's node kill replaces the shared RabbitMQ's
    restart, a pair's failover the shared PostgreSQL's restart."""
    broker = CLUSTER_FAULTS[1:] if cluster else FAULTS[1:2]
    database = PAIR_FAULTS[2:] if pg_pair else FAULTS[2:]
    return (FAULTS[0], *broker, *database)


def start_cluster(root: Path) -> Cluster:
    cluster = Cluster(root)
    try:
        cluster.start()
        cluster.add_vhost(SOAK_VHOST)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def make_key(env: dict[str, str]) -> str:
    """A key of the soak's own ledger, made with the CLI as an operator would (the key is its
    output's last line); the API refuses every job without one."""
    made = subprocess.run(
        [CONVEYOR, "keys", "create", "soak", "--scopes", "enqueue,read,operate,metrics"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    key = made.stdout.strip().splitlines()[-1].strip()
    if not key.startswith("cvk_"):
        raise SystemExit(f"could not make the soak's key: {made.stdout!r} {made.stderr!r}")
    return key


def soak(
    stack: Stack,
    ledger: faults.Ledger,
    args: argparse.Namespace,
    pair: PgPair | None,
    cluster: Cluster | None,
) -> Report:
    stack.start_api()
    stack.start_relay()
    stack.wait_api()
    workers = faults.Workers(stack)
    supervised = contextlib.ExitStack()
    supervisors = [
        supervised.enter_context(faults.Supervisor(workers, max_restarts=500, threads=8)) for _ in range(2)
    ]
    ledger.wait_until(lambda: live_workers(ledger) >= 2, timeout=90, what="two live workers")
    poster = faults.Poster(stack.base_url, lambda n: {"sleep_seconds": (n % 10) / 20}, args.rate)
    injected: list[Fault] = []
    quiet = threading.Event()
    killer = threading.Thread(
        target=kill_workers, args=(supervisors, args.kill_every, quiet, injected), daemon=True
    )
    try:
        poster.start()
        started = time.monotonic()
        if args.kill_every > 0:
            killer.start()
        number = 0
        while (left := args.duration - (time.monotonic() - started)) > 0:
            time.sleep(min(args.fault_every, left))
            if args.duration - (time.monotonic() - started) < args.fault_every / 2:
                break  # leave the last stretch fault-free, to see the system settle
            kind = args.faults[number % len(args.faults)]
            hard = number // len(args.faults) % 2 == 1
            injected.append(inject(kind, supervisors[number % 2], hard, pair, cluster, args))
            number += 1
        quiet.set()
        remaining = args.duration - (time.monotonic() - started)
        time.sleep(max(0.0, remaining))
    finally:
        quiet.set()
        poster.stop()
        if killer.is_alive():
            killer.join(10)
    try:
        ledger.wait_terminal(poster.ids, timeout=args.drain_timeout)
    except AssertionError as stragglers:
        print(f"not everything finished: {stragglers}", file=sys.stderr)
    finally:
        supervised.close()
    report = tally(ledger, poster, injected, args)
    report.worker_restarts = sum(s.restarts for s in supervisors)
    return report


def live_workers(ledger: faults.Ledger) -> int:
    rows = ledger.query(
        "SELECT count(*) AS n FROM workers WHERE stopped_at IS NULL AND last_seen > now() - interval '5 s'"
    )
    return int(rows[0]["n"])


def kill_workers(
    supervisors: list[faults.Supervisor], every: float, quiet: threading.Event, injected: list[Fault]
) -> None:
    """SIGKILL the workers in turn, every `every` seconds, until the quiet stretch begins."""
    number = 0
    while not quiet.wait(every):
        fault = Fault("worker-sigkill", time.time())
        supervisors[number % 2].current.kill()
        fault.restored_at = time.time()
        fault.detail = "SIGKILL of a worker's process group (on its own clock); its supervisor starts another"
        injected.append(fault)
        print(f"{time.strftime('%H:%M:%S')} fault: worker-sigkill (on its own clock)", flush=True)
        number += 1


def inject(
    kind: str,
    supervisor: faults.Supervisor,
    hard: bool,
    pair: PgPair | None,
    cluster: Cluster | None,
    args: argparse.Namespace,
) -> Fault:
    fault = Fault(kind, time.time())
    if kind == "rabbit-node-kill":
        assert cluster is not None
        index = kill_target(cluster)
        cluster.nodes[index].kill()
        time.sleep(args.node_down)
        cluster.restart(index)
        fault.detail = f"SIGKILL of node {index + 1} of 3, started again {args.node_down:g} s later"
    elif kind == "worker-sigkill":
        supervisor.current.kill()
        fault.detail = "SIGKILL of a worker's process group; its supervisor starts another"
    elif kind == "rabbitmq-restart":
        mode = "kill" if hard and outages.rabbitmq_hard_kill_allowed() else "app"
        with outages.rabbitmq_down(mode):
            time.sleep(1)
        fault.detail = (
            "SIGKILL of the Erlang VM, then rabbitmq-server" if mode == "kill" else "stop_app/start_app"
        )
    elif kind == "postgres-failover":
        assert pair is not None
        lost = pair.primary.port
        pair.stop_primary()
        time.sleep(2)  # a failover manager noticing
        promoted = pair.promote().port
        fault.restored_at = time.time()
        pair.rebuild_standby()
        fault.detail = (
            f"primary {lost} stopped (-m immediate), {promoted} promoted 2 s later, {lost} made its standby"
        )
    else:
        away = outages.restart_postgres()
        fault.detail = f"pg_ctlcluster restart (fast), {away:.1f}s"
    fault.restored_at = fault.restored_at or time.time()
    print(f"{time.strftime('%H:%M:%S')} fault: {kind} ({fault.detail})", flush=True)
    return fault


_kills = [0]


def kill_target(cluster: Cluster) -> int:
    """The nodes in turn: the first, then the second, then the third."""
    index = _kills[0] % len(cluster.nodes)
    _kills[0] += 1
    return index


def tally(
    ledger: faults.Ledger, poster: faults.Poster, injected: list[Fault], args: argparse.Namespace
) -> Report:
    ids = poster.ids
    jobs = ledger.jobs(ids)
    states = {job_id: job["state"] for job_id, job in jobs.items()}
    executions = ledger.effects("started")
    effects = ledger.effects()
    report = Report(
        duration_s=args.duration,
        rate_per_s=args.rate,
        accepted=len(ids),
        min_accepted_share=args.min_accepted_share,
    )
    report.refused_during_outages = dict(poster.refused)
    report.succeeded = sum(1 for s in states.values() if s == "succeeded")
    report.dead = sum(1 for s in states.values() if s == "dead")
    report.cancelled = sum(1 for s in states.values() if s == "cancelled")
    report.missing_from_ledger = len(set(ids) - set(jobs))
    report.stuck_non_terminal = sum(1 for s in states.values() if s not in faults.TERMINAL)
    report.lost = report.missing_from_ledger + report.stuck_non_terminal
    report.duplicated_effects = sum(1 for n in effects.values() if n > 1)
    report.executions = sum(executions.values())
    report.re_executions = report.executions - len(executions)
    spans = sorted(
        (job["finished_at"] - job["created_at"]).total_seconds()
        for job in jobs.values()
        if job["finished_at"]
    )
    report.max_non_terminal_s = round(spans[-1], 2) if spans else 0.0
    report.p99_accept_to_done_s = round(spans[int(0.99 * (len(spans) - 1))], 2) if spans else 0.0
    for fault in sorted(injected, key=lambda f: f.injected_at):
        report.faults.append(asdict(fault) | recovery(ledger, fault))
    report.by_kind = summarise(report.faults)
    return report


def summarise(injected: list[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Per fault kind: how many, and the median and worst time away and to catch up."""
    kinds: dict[str, dict[str, float | int | None]] = {}
    for kind in sorted({f["kind"] for f in injected}):
        mine = [f for f in injected if f["kind"] == kind]
        away = sorted(f["away_s"] for f in mine)
        caught = sorted(f["recovery_s"] for f in mine if f["recovery_s"] is not None)
        kinds[kind] = {
            "count": len(mine),
            "away_median_s": away[len(away) // 2],
            "away_max_s": away[-1],
            "recovery_median_s": caught[len(caught) // 2] if caught else None,
            "recovery_max_s": caught[-1] if caught else None,
        }
    return kinds


def recovery(ledger: faults.Ledger, fault: Fault) -> dict[str, float | None]:
    """How long the service was away, and how long after it was back every job accepted
    until then was finished: the jobs the fault interrupted and the backlog it built."""
    row = ledger.query(
        "SELECT extract(epoch FROM max(finished_at)) AS done FROM jobs"
        " WHERE created_at < to_timestamp(%(at)s)",
        {"at": fault.restored_at},
    )[0]
    caught_up = None if row["done"] is None else round(max(0.0, float(row["done"]) - fault.restored_at), 2)
    return {"away_s": round(fault.restored_at - fault.injected_at, 2), "recovery_s": caught_up}


def print_report(report: Report, workdir: Path) -> None:
    verdict = "OK" if report.ok else "FAILED"
    if report.too_few:
        verdict += f" (accepted {report.accepted} of the {report.promised} promised)"
    print(f"\n== soak: {report.duration_s:.0f}s at {report.rate_per_s:g} jobs/s — {verdict}")
    rows = [
        ("accepted (202)", f"{report.accepted} of {report.promised} posted at the rate"),
        ("succeeded", report.succeeded),
        ("dead", report.dead),
        ("cancelled", report.cancelled),
        ("lost", f"{report.lost} (missing {report.missing_from_ledger}, stuck {report.stuck_non_terminal})"),
        ("duplicated effects", report.duplicated_effects),
        ("executions (re-executions)", f"{report.executions} ({report.re_executions})"),
        ("max time non-terminal", f"{report.max_non_terminal_s}s"),
        ("p99 accept → done", f"{report.p99_accept_to_done_s}s"),
        ("refused while the database was away", report.refused_during_outages or "none"),
        ("worker restarts", report.worker_restarts),
    ]
    for name, value in rows:
        print(f"  {name:<38} {value}")
    print("  faults:")
    for fault in report.faults:
        print(
            f"    {fault['kind']:<18} away {fault['away_s']:5.1f}s, then every job accepted so far done"
            f" within {fault['recovery_s']}s — {fault['detail']}"
        )
    print("  per kind:")
    for kind, row in report.by_kind.items():
        print(
            f"    {kind:<18} {row['count']:>3} faults, away median {row['away_median_s']}s"
            f" max {row['away_max_s']}s;"
            f" caught up median {row['recovery_median_s']}s max {row['recovery_max_s']}s"
        )
    print(f"  logs: {workdir}")


if __name__ == "__main__":
    threading.current_thread().name = "soak"
    sys.exit(main())
