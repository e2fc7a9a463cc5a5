"""BROKER_QUEUE_TYPE over queues of the other type, on a vhost of the test's own: a worker stops
once, saying how to migrate, and readiness and the relay say the same; `conveyor queues migrate`
turns classic queues into quorum ones with jobs published and not claimed, after which a
quorum worker runs every job once, and the dead-letter copies are there again."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pika
import psycopg
import pytest
from dramatiq import Message
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.errors import PublishFailed
from app.execution.queue_types import EXIT_QUEUE_TYPE
from app.ledger.jobs import take_dead_letters, take_publishable
from app.operate import health
from app.operate import queue_types as migration
from app.settings import Settings
from app.transport import rabbitmq
from app.transport.confirms import ConfirmingPublisher
from tests.support import seed
from tests.support.faults import Ledger, job_message, peek_queue, wait_for_log
from tests.support.infra import Infra, rabbitmqctl
from tests.support.stack import CONVEYOR, Stack

QUEUES = ("default", "email", "exports")
QUORUM = {"BROKER_QUEUE_TYPE": "quorum"}
JOBS = 40
ECHO = "app.tasks.example.echo"


@pytest.fixture
def vhost(clean_ledger: Infra) -> Iterator[str]:
    """A vhost of this test's own (the run's is classic for every other test)."""
    name = f"{clean_ledger.vhost}_types_{secrets.token_hex(2)}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


def url_of(vhost: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}"


def queue_types(vhost: str) -> dict[str, str]:
    """Each queue's type, as RabbitMQ lists it (not through the code under test)."""
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    listed = subprocess.run(
        [exe, "-q", "list_queues", "-p", vhost, "name", "type", "--no-table-headers"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return dict(line.split() for line in listed.splitlines() if line.strip())


def migrate(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BROKER_URL": url, **QUORUM}
    return subprocess.run(
        [CONVEYOR, "queues", "migrate", *args], env=env, capture_output=True, text=True, timeout=60
    )


def ring(url: str, ids: list[str], dead: str) -> None:
    """Publish each job's doorbell to `default` and the dead job's copy to `default.XQ`."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        persistent = pika.BasicProperties(delivery_mode=2)
        for job_id in ids:
            body = job_message(job_id, ECHO, {"message": "m"})
            channel.basic_publish("", "default", body, properties=persistent, mandatory=True)
        channel.basic_publish(
            "", "default.XQ", job_message(dead, ECHO, {}), properties=persistent, mandatory=True
        )
    finally:
        connection.close()


def test_a_worker_on_queues_of_the_other_type_stops_once_saying_how_to_migrate(
    vhost: str, tmp_path: Path
) -> None:
    url = url_of(vhost)
    rabbitmq.ensure_queues(url, QUEUES, "classic")
    stack = Stack(workdir=tmp_path, env={**os.environ, "BROKER_URL": url, **QUORUM})
    try:
        # `conveyor worker` checks before it starts its processes; `dramatiq app.worker`, in each;
        # `conveyor worker` of one process (which runs its jobs itself), as it boots.
        workers = [
            stack.start_worker(processes=2, threads=1),
            stack.start_worker("alone", processes=1, threads=1),
            stack._process(
                "dramatiq",
                ["app.worker", "--processes", "1", "--threads", "1", "--skip-logging"],
                command=[sys.executable, "-m", "dramatiq"],
            ),
        ]
        codes = [worker.wait_stopped(timeout=60) for worker in workers]
    finally:
        stack.stop()
    for worker, code in zip(workers, codes, strict=True):
        log = worker.log()
        assert code == EXIT_QUEUE_TYPE, log[-3000:]
        stops = [line for line in log.splitlines() if "worker stopped:" in line]
        assert len(stops) == 1, log[-3000:]
        for needle in ("'default'", "classic queue", "BROKER_QUEUE_TYPE=quorum", "conveyor queues migrate"):
            assert needle in stops[0]
        assert "Consumer encountered" not in log, "no consumer started, failed and restarted"

    settings = Settings(broker_url=url, broker_queue_type="quorum")
    ready = health.check_broker(settings, list(QUEUES))
    assert not ready.ok
    assert ready.reason is not None
    assert "conveyor queues migrate" in ready.reason
    assert health.check_broker(Settings(broker_url=url, broker_queue_type="classic"), list(QUEUES)).ok

    doorbell = Message(
        queue_name="default", actor_name="app.tasks.example.echo", args=(), kwargs={}, options={}
    )
    publisher = ConfirmingPublisher(url, queue_type="quorum")
    try:
        with pytest.raises(PublishFailed, match="conveyor queues migrate"):
            publisher.publish([(doorbell, 0)])
    finally:
        publisher.close()


def test_migrate_turns_classic_queues_into_quorum_and_a_quorum_worker_runs_every_job_once(
    vhost: str, clean_ledger: Infra, tmp_path: Path
) -> None:
    url = url_of(vhost)
    ledger = Ledger(clean_ledger.libpq_url)
    rabbitmq.ensure_queues(url, QUEUES, "classic")
    dead = str(seed.insert_job(clean_ledger, state="dead", errors=["boom"]))
    ids = [
        str(seed.insert_job(clean_ledger, state="queued", payload={"message": f"m{n}"})) for n in range(JOBS)
    ]
    ring(url, ids, dead)  # what a classic relay published for them
    assert rabbitmq.depths(url, ["default", "default.XQ"]) == {"default": JOBS, "default.XQ": 1}
    stack = Stack(workdir=tmp_path, env={**os.environ, "BROKER_URL": url})
    consumer: pika.BlockingConnection | None = None
    try:
        relay = stack.start_relay(env=QUORUM)
        late = str(seed.insert_job(clean_ledger, state="queued", published=False))
        wait_for_log(relay, "conveyor queues migrate", 30)  # it cannot publish `late`, and says why
        said = [line for line in relay.log().splitlines() if "conveyor queues migrate" in line]
        assert len(said) == 1, said
        assert "queue 'default' is a classic queue" in said[0]

        # A worker left running (Dramatiq consumes `<queue>.DQ` too, which is empty here).
        consumer = pika.BlockingConnection(pika.URLParameters(url))
        consumer.channel().basic_consume("default.DQ", lambda *_: None)
        refused = migrate(url)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "default.DQ (1)" in refused.stderr
        assert "--force" in refused.stderr

        dry = migrate(url, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "workers consume" in dry.stderr
        assert "would re-make" in dry.stdout
        assert f"default: {JOBS} job(s) and 1 dead-letter copy(ies) would be published again" in dry.stdout
        assert set(queue_types(vhost).values()) == {"classic"}, "a dry run changes nothing"

        done = migrate(url, "--force")
        assert done.returncode == 0, done.stderr
        # Exactly what the deleted queues held: not `late`, which the relay (on quorum) cannot
        # publish before the migration commits, though `default` is quorum again before then.
        marked = f"default: {JOBS} job(s) and 1 dead-letter copy(ies) marked to publish again"
        assert marked in done.stdout, done.stdout
        assert "done: 9 queue(s) declared as quorum" in done.stdout, done.stdout
        entry = ledger.query(
            "SELECT count, detail FROM audit_log WHERE action = 'queue.migrate' AND target = 'default'"
        )
        assert [(row["count"], row["detail"]["dead_copies"], row["detail"]["messages"]) for row in entry] == [
            (JOBS, 1, JOBS + 1)
        ]
        types = queue_types(vhost)
        assert {f"{q}{s}" for q in QUEUES for s in ("", ".DQ", ".XQ")} == set(types)
        assert set(types.values()) == {"quorum"}, types

        worker = stack.start_worker(threads=4, env=QUORUM)
        ids.append(late)
        jobs = ledger.wait_terminal(ids, timeout=60)
        assert {job["state"] for job in jobs.values()} == {"succeeded"}, "none lost"
        assert {job["attempts"] for job in jobs.values()} == {1}
        runs = ledger.query(
            "SELECT count(*) AS n FROM job_attempts WHERE job_id::text = ANY(%(ids)s)", {"ids": ids}
        )
        assert runs[0]["n"] == JOBS + 1, "none run twice"
        copies = [rabbitmq.run_of(body) for body in peek_queue(url, "default.XQ")]
        assert copies == [(str(dead), 1)], "the dead job's copy is in the new dead-letter queue"
        assert worker.alive(), worker.log()[-3000:]
        assert migrate(url).stdout.strip().endswith("nothing to do: every queue is quorum")
    finally:
        if consumer is not None and consumer.is_open:
            consumer.close()
        stack.stop()
    stopped = [json.loads(line) for line in relay.log().splitlines() if '"relay stopped"' in line]
    assert [line["published"] for line in stopped] == [JOBS + 2], (
        "each job once more, `late` and the copy once"
    )


def relay_takes(infra: Infra) -> tuple[list[str], list[str]]:
    """What a relay would publish now: jobs, dead-letter copies (marked published on return)."""
    with psycopg.connect(infra.libpq_url, autocommit=True) as conn, conn.transaction():
        jobs = [str(job.id) for job in take_publishable(conn, 100)]
        return jobs, [str(job.id) for job in take_dead_letters(conn, 100)]


def test_migrate_holds_the_jobs_it_marks_so_no_relay_publishes_one_into_a_re_made_queue_first(
    clean_ledger: Infra,
) -> None:
    """A relay on the new type publishes into `default` as soon as it is quorum again, before the
    migration marks what the old queue held: it must publish none of the jobs the migration
    marks (nor `late`, still to publish), or they are counted and published twice; a job added
    meanwhile is the relay's alone."""
    dead = str(seed.insert_job(clean_ledger, state="dead", errors=["boom"]))
    ids = [str(seed.insert_job(clean_ledger, state="queued")) for _ in range(3)]
    late = str(seed.insert_job(clean_ledger, state="queued", published=False))
    what = migration.Republish("default", jobs=True, dead=True)

    async def migrate_with_a_relay_in_between() -> tuple[tuple[int, int], tuple[list[str], list[str]], str]:
        engine = create_async_engine(clean_ledger.database_url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                held = await migration.hold(conn, what)
                fresh = str(seed.insert_job(clean_ledger, state="queued", published=False))
                between = await asyncio.to_thread(relay_takes, clean_ledger)  # the queues re-made
                return await migration.republish(conn, what, held), between, fresh
        finally:
            await engine.dispose()

    counts, between, fresh = asyncio.run(migrate_with_a_relay_in_between())
    assert between == ([fresh], []), "the relay publishes only the job added meanwhile"
    assert counts == (len(ids), 1), "the migration marks what the old queues held, and only that"
    jobs, copies = relay_takes(clean_ledger)
    assert sorted(jobs) == sorted([*ids, late])
    assert copies == [dead]
