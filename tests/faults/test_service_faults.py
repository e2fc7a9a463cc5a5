"""The broker and the database go away and come back: every 202 reaches a terminal state (I1).

The broker outage goes through the suite's TCP proxy; the restarts are real restarts of
the shared RabbitMQ and PostgreSQL, each brought back in a `finally`.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import orjson
import pytest

from tests.faults.conftest import Conveyor
from tests.support import outages
from tests.support.faults import EFFECT_TASK, Poster, Reader
from tests.support.keys import auth

RATE = 10.0  # jobs/s: steady, well below what one worker drains, so backlogs show the fault


def short_job(n: int) -> dict[str, Any]:
    return {"sleep_seconds": 0.05}


def half_second_job(n: int) -> dict[str, Any]:
    return {"sleep_seconds": 0.5}  # a few are always running when the broker goes away


def count_in_logs(text: str, needle: str) -> int:
    return sum(needle in line for line in text.splitlines())


def test_the_broker_unreachable_for_30_seconds_delays_jobs_but_loses_none(
    conveyor: Conveyor, record_property: Any
) -> None:
    ledger = conveyor.ledger
    worker = conveyor.workers.start(threads=8)
    relay = conveyor.stack.processes["relay"]
    poster = Poster(conveyor.base_url, short_job, RATE).start()
    try:
        time.sleep(3)
        logged_before = {"worker": len(worker.log()), "relay": len(relay.log())}
        conveyor.proxy.cut()
        accepted_at_cut = len(poster.accepted)
        peak, outage_ends = 0, time.monotonic() + 30
        while time.monotonic() < outage_ends:
            peak = max(peak, ledger.outbox_size())
            time.sleep(0.5)
        accepted_during = len(poster.accepted) - accepted_at_cut
        conveyor.proxy.restore()
        restored_at = time.monotonic()
        drain_seconds = ledger.wait_until(
            lambda: ledger.outbox_size() == 0, timeout=60, what="outbox drained"
        )
        time.sleep(2)
    finally:
        conveyor.proxy.restore()
        poster.stop()

    jobs = ledger.wait_terminal(poster.ids, timeout=90)
    settled_seconds = time.monotonic() - restored_at
    record_property("outbox_peak", peak)
    record_property("outbox_drain_seconds", round(drain_seconds, 2))
    print(
        f"\nbroker outage 30s: {accepted_during} accepted meanwhile, outbox peak {peak}, "
        f"drained {drain_seconds:.1f}s after the broker came back, all done after {settled_seconds:.1f}s"
    )
    for name, process in (("worker", worker), ("relay", relay)):
        lines = [
            orjson.loads(line)
            for line in process.log()[logged_before[name] :].splitlines()
            if line.startswith("{")
        ]
        loud = [line for line in lines if line.get("level") in {"error", "critical"}]
        down = [line for line in lines if "unavailable" in str(line.get("event"))]
        back = [line for line in lines if "available again" in str(line.get("event"))]
        assert loud == [], f"the {name} logged errors for an outage it rides out: {loud[:3]}"
        assert len(down) == 1, f"one warning when the broker goes away, from the {name}: {down}"
        assert len(back) == 1, f"one line when it is back, from the {name}: {back}"
    assert accepted_during >= 0.8 * RATE * 30, f"202s must go on while the broker is away: {poster.refused}"
    assert poster.refused == Counter()
    assert peak >= 0.8 * accepted_during, "the outbox holds what could not be published"
    assert Counter(job["state"] for job in jobs.values()) == {"succeeded": len(poster.ids)}
    assert ledger.effects() == Counter(dict.fromkeys(poster.ids, 1))


def test_rabbitmq_restarting_three_times_under_load_loses_no_job_and_doubles_no_effect(
    conveyor: Conveyor, record_property: Any
) -> None:
    ledger = conveyor.ledger
    worker = conveyor.workers.start(threads=8)
    modes = ["app", "app", "kill" if outages.rabbitmq_hard_kill_allowed() else "app"]
    poster = Poster(conveyor.base_url, half_second_job, RATE).start()
    try:
        for mode in modes:
            time.sleep(2)
            with outages.rabbitmq_down(mode):
                time.sleep(1)
        time.sleep(2)
    finally:
        poster.stop()
        outages.ensure_rabbitmq()

    jobs = ledger.wait_terminal(poster.ids, timeout=120)
    skipped = sum(count_in_logs(w.log(), "message skipped") for w in conveyor.workers.started)
    executions = ledger.effects("started")
    record_property("restarts", ",".join(modes))
    record_property("duplicate_deliveries_skipped", skipped)
    print(
        f"\nrabbitmq restarts {modes}: {len(poster.ids)} accepted, {skipped} duplicate deliveries "
        f"acknowledged without running, {sum(n - 1 for n in executions.values())} re-executions"
    )
    assert poster.refused == Counter(), "accepting never needs the broker"
    assert Counter(job["state"] for job in jobs.values()) == {"succeeded": len(poster.ids)}
    assert ledger.effects() == Counter(dict.fromkeys(poster.ids, 1))
    # A delivery whose job was claimed but whose acknowledgement the restart lost comes again
    # and is skipped (how many depends on where the restart lands: claims and their
    # acknowledgement go out together, so it is rare); whatever came again never ran again.
    assert executions == Counter(dict.fromkeys(poster.ids, 1)), "nothing ran twice"
    assert worker.alive(), "the worker reconnects by itself"
    assert conveyor.stack.processes["relay"].alive()


def test_a_202_is_never_answered_for_a_job_whose_commit_failed(conveyor: Conveyor) -> None:
    """A constraint checked at COMMIT refuses one marked job: its POST must not get a 202."""
    marker = 0.125
    ledger = conveyor.ledger
    ledger.query(
        f"""
        CREATE OR REPLACE FUNCTION refuse_marked_job() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.payload->>'sleep_seconds' = '{marker}' THEN
                RAISE EXCEPTION 'refused at commit (fault test)';
            END IF;
            RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER refuse_marked_job AFTER INSERT ON jobs
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_marked_job();
        """
    )
    try:
        with httpx.Client(base_url=conveyor.base_url, timeout=10, headers=auth()) as client:
            body = {"task": EFFECT_TASK, "payload": {"sleep_seconds": marker}}
            refused = client.post("/api/v1/jobs", json=body)
            fine = client.post("/api/v1/jobs", json={"task": EFFECT_TASK, "payload": {}})
    finally:
        ledger.query(
            "DROP TRIGGER IF EXISTS refuse_marked_job ON jobs; DROP FUNCTION IF EXISTS refuse_marked_job"
        )

    assert fine.status_code == 202
    assert ledger.states([fine.json()["id"]])["missing"] == 0
    assert refused.status_code >= 500, f"a 202 for a job that is not in the ledger: {refused.text}"
    assert ledger.query("SELECT count(*) AS n FROM jobs")[0]["n"] == 1


@pytest.mark.skipif(not outages.postgres_restart_allowed(), reason="pg_ctlcluster is not available")
def test_postgresql_restarting_under_load_loses_no_accepted_job(
    conveyor: Conveyor, record_property: Any
) -> None:
    ledger = conveyor.ledger
    worker = conveyor.workers.start(threads=8)
    poster = Poster(conveyor.base_url, short_job, RATE).start()
    reader: Reader | None = None
    try:
        time.sleep(3)
        reader = Reader(conveyor.base_url, poster.ids[0]).start()
        time.sleep(1)
        accepted_before = len(poster.accepted)
        away = outages.restart_postgres()
        back_at = time.monotonic()
        restarted_at = len(poster.accepted)
        ledger.wait_until(lambda: len(poster.accepted) > restarted_at + 10, timeout=60, what="202s again")
        time.sleep(2)
    finally:
        poster.stop()
        if reader is not None:
            reader.stop()
        outages.wait_postgres()

    jobs = ledger.wait_terminal(poster.ids, timeout=120)
    record_property("postgres_away_seconds", round(away, 2))
    print(
        f"\npostgres restart ({away:.1f}s): {len(poster.ids)} accepted ({accepted_before} before), "
        f"refused meanwhile: {dict(poster.refused)}"
    )
    assert poster.dishonest == [], "a POST got a 500, a non-JSON answer or a 503 without Retry-After"
    assert set(poster.refused) <= {"503"}, poster.refused
    assert reader is not None
    assert reader.dishonest == [], "a GET got a 500, a non-JSON answer or a 503 without Retry-After"
    assert set(reader.answers) <= {200, 503}, reader.answers
    first_read_back = min((at for at, code in reader.timeline if at >= back_at and code == 200), default=None)
    assert first_read_back is not None, "reads came back after the restart"
    assert first_read_back - back_at < 5, "the first reads after the restart succeed (no stale connection)"
    print(f"reads during the restart: {dict(reader.answers)}, POSTs refused: {dict(poster.refused)}")
    assert ledger.states(poster.ids)["missing"] == 0, "every 202 names a job in the ledger"
    assert Counter(job["state"] for job in jobs.values()) == {"succeeded": len(poster.ids)}
    assert ledger.effects() == Counter(dict.fromkeys(poster.ids, 1))
    assert worker.alive(), "the worker reconnects by itself"
    assert conveyor.stack.processes["relay"].alive()
    assert conveyor.stack.processes["api"].alive()


@pytest.mark.skipif(not outages.postgres_restart_allowed(), reason="pg_ctlcluster is not available")
def test_the_first_posts_after_postgresql_restarted_are_accepted_not_refused(conveyor: Conveyor) -> None:
    """The intake's pooled connections died with the server while the API was idle; the pool
    must notice before lending one (the server's goodbye is waiting on the socket), so the
    first requests after the restart get 202, not a 503 from a stale connection."""
    job = {"task": EFFECT_TASK, "payload": {"sleep_seconds": 0}}
    with httpx.Client(base_url=conveyor.base_url, headers=auth(), timeout=10) as client:
        warm = [client.post("/api/v1/jobs", json=job) for _ in range(5)]  # the pool holds connections now
        assert [r.status_code for r in warm] == [202] * 5
        try:
            outages.restart_postgres()
        finally:
            outages.wait_postgres()
        first = [client.post("/api/v1/jobs", json=job) for _ in range(5)]
    assert [r.status_code for r in first] == [202] * 5, [r.text for r in first]
