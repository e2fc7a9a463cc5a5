"""Workers that die, stop, freeze and crash on a job: no job lost, no effect doubled (I1-I3)."""

from __future__ import annotations

import signal
import time
from collections import Counter

from tests.faults.conftest import Conveyor
from tests.support.faults import (
    EFFECT_TASK,
    QUEUE,
    SIDE_EFFECT_TASK,
    Supervisor,
    peek_queue,
    post,
    post_many,
    wait_for_log,
)

# The suite's lease (tests/conftest.py): a job not renewed for this long is handed back.
LEASE_SECONDS = 3.0
# A hundred task threads need more than the suite's two pooled connections.
BIG_POOL = {"DB_POOL_SIZE": "5"}


def test_a_sigkilled_worker_loses_no_job_and_doubles_no_effect(conveyor: Conveyor) -> None:
    ledger = conveyor.ledger
    worker = conveyor.workers.start(threads=100, env=BIG_POOL)
    ids = post_many(conveyor.base_url, EFFECT_TASK, [{"sleep_seconds": 4}] * 100)
    ledger.wait_until(lambda: ledger.running(ids) >= 90, timeout=40, what="90 jobs running at once")

    worker.kill()
    killed_mid_job = ledger.running(ids)
    assert killed_mid_job >= 90
    conveyor.workers.start(threads=100, env=BIG_POOL)
    jobs = ledger.wait_terminal(ids, timeout=90)

    assert Counter(job["state"] for job in jobs.values()) == {"succeeded": 100}
    assert ledger.effects() == Counter(dict.fromkeys(ids, 1))
    assert sum(1 for job in jobs.values() if job["attempts"] == 2) >= killed_mid_job
    lost = [a for job_id in ids for a in ledger.attempts(job_id) if a["outcome"] == "lost"]
    assert len(lost) >= killed_mid_job, "every killed attempt is recorded as lost"


def test_a_sigtermed_worker_finishes_or_hands_back_its_jobs_within_the_grace_period(
    conveyor: Conveyor,
) -> None:
    ledger = conveyor.ledger
    grace = 4.0  # WORKER_SHUTDOWN_SECONDS of the suite
    worker = conveyor.workers.start(threads=5)
    long = post(conveyor.base_url, EFFECT_TASK, {"sleep_seconds": 10, "progress_every": 0.5})
    short = post_many(conveyor.base_url, EFFECT_TASK, [{"sleep_seconds": 3}] * 4)
    ledger.wait_until(lambda: ledger.running([long, *short]) == 5, timeout=30, what="5 jobs running")
    waiting = post_many(conveyor.base_url, EFFECT_TASK, [{"sleep_seconds": 0.2}] * 6)
    time.sleep(0.5)  # let the worker prefetch them

    sigterm_at = time.monotonic()
    worker.signal_group(signal.SIGTERM)
    assert worker.popen is not None
    worker.popen.wait(timeout=3 * grace + 5)
    stopped_in = time.monotonic() - sigterm_at

    assert stopped_in < 3 * grace + 5
    after_stop = ledger.jobs([long, *short, *waiting])
    assert {after_stop[i]["state"] for i in short} == {"succeeded"}, "in-flight jobs finish in the grace"
    assert after_stop[long]["state"] in {"retrying", "queued"}, after_stop[long]
    assert [a["outcome"] for a in ledger.attempts(long)] == ["interrupted"], "handed back, not left to expire"
    assert all(after_stop[i]["attempts"] == 0 for i in waiting), "prefetched jobs were not started"

    conveyor.workers.start(threads=5)
    ids = [long, *short, *waiting]
    jobs = ledger.wait_terminal(ids, timeout=60)
    assert {job["state"] for job in jobs.values()} == {"succeeded"}
    assert ledger.effects() == Counter(dict.fromkeys(ids, 1))
    assert jobs[long]["attempts"] == 2


def test_a_stopped_worker_past_its_lease_cannot_write_late_and_the_effect_happens_once(
    conveyor: Conveyor,
) -> None:
    ledger = conveyor.ledger
    # Prefetch 1: a frozen consumer keeps what it prefetched until RabbitMQ drops its
    # connection (missed heartbeats, a minute or more), so the test lets it hold only the job.
    stale = conveyor.workers.start(threads=1, env={"WORKER_PREFETCH": "1"})
    job_id = post(conveyor.base_url, EFFECT_TASK, {"sleep_seconds": 1.5})
    ledger.wait_until(lambda: ledger.job(job_id)["state"] == "running", timeout=30, what="the job running")
    stale_worker_id = ledger.job(job_id)["worker_id"]

    stale.signal_group(signal.SIGSTOP)
    try:
        fresh = conveyor.workers.start(threads=1)
        job = ledger.wait_terminal([job_id], timeout=30)[job_id]
        assert job["state"] == "succeeded"
        assert job["attempts"] == 2
        assert job["worker_id"] != stale_worker_id
        owner = job["worker_id"]
    finally:
        stale.signal_group(signal.SIGCONT)

    wait_for_log(stale, "late write refused", timeout=20)
    job = ledger.job(job_id)
    assert (job["state"], job["attempts"], job["worker_id"]) == ("succeeded", 2, owner)
    assert ledger.effects("started")[job_id] == 2, "both attempts ran"
    assert ledger.effects()[job_id] == 1, "only the owner's effect committed"
    effect_attempts = ledger.query(
        "SELECT attempt FROM diagnostic_effects WHERE job_id = %(id)s AND kind = 'effect'", {"id": job_id}
    )
    assert [row["attempt"] for row in effect_attempts] == [2]
    assert fresh.alive()


def test_a_job_that_kills_its_worker_every_time_goes_dead_and_spares_the_jobs_beside_it(
    conveyor: Conveyor,
) -> None:
    ledger = conveyor.ledger
    with Supervisor(conveyor.workers, max_restarts=6, threads=4) as supervisor:
        poison = post(conveyor.base_url, EFFECT_TASK, {"sleep_seconds": 1.0, "exit_always": True})
        others = post_many(conveyor.base_url, EFFECT_TASK, [{"sleep_seconds": 0.05}] * 12)
        jobs = ledger.wait_terminal([poison, *others], timeout=90)

    assert jobs[poison]["state"] == "dead"
    assert jobs[poison]["attempts"] == jobs[poison]["max_attempts"] == 3
    assert "lease expired" in jobs[poison]["last_error"]
    assert [a["outcome"] for a in ledger.attempts(poison)] == ["lost"] * 3
    assert supervisor.restarts >= 3, "each attempt took its worker down"
    assert {jobs[i]["state"] for i in others} == {"succeeded"}
    effects = ledger.effects()
    assert effects[poison] == 0
    assert all(effects[i] == 1 for i in others)
    dead_letters = peek_queue(conveyor.broker_url, f"{QUEUE}.XQ")
    assert sum(poison.encode() in body for body in dead_letters) == 1, "a copy sits in the dead-letter queue"


def test_a_worker_dying_after_the_effect_repeats_only_the_effect_outside_the_transaction(
    conveyor: Conveyor,
) -> None:
    """The honest limit: what a task does outside `job.transaction()` is at least once."""
    ledger = conveyor.ledger
    crash = {"sleep_seconds": 0.2, "crash_on_attempt": 1}
    with Supervisor(conveyor.workers, max_restarts=3, threads=2):
        # One after the other: a crash takes down every job running in that process.
        inside = post(conveyor.base_url, EFFECT_TASK, crash)
        jobs = ledger.wait_terminal([inside], timeout=60)
        outside = post(conveyor.base_url, SIDE_EFFECT_TASK, crash)
        jobs |= ledger.wait_terminal([outside], timeout=60)

    assert {job["state"] for job in jobs.values()} == {"succeeded"}
    assert jobs[inside]["attempts"] == jobs[outside]["attempts"] == 2
    assert ledger.effects()[inside] == 1, "the crashed attempt's effect rolled back with it"
    assert ledger.effects("side_effect")[outside] == 2, "the crashed attempt's side effect stayed"


def test_a_stop_signal_that_arrives_twice_at_once_still_lets_running_jobs_finish(conveyor: Conveyor) -> None:
    # Ctrl-C, `kill -TERM -<pgid>` and systemd signal the whole process group: the worker process
    # gets the signal, and Dramatiq's main process forwards another copy to it.
    ledger = conveyor.ledger
    worker = conveyor.workers.start(threads=2)
    ids = post_many(conveyor.base_url, EFFECT_TASK, [{"sleep_seconds": 2}] * 2)
    ledger.wait_until(lambda: ledger.running(ids) == 2, timeout=30, what="both jobs running")
    worker.signal_group(signal.SIGTERM)
    time.sleep(0.3)
    worker.signal_group(signal.SIGTERM)
    assert worker.popen is not None
    assert worker.popen.wait(timeout=20) == 0, worker.log()[-3000:]

    assert {job["state"] for job in ledger.jobs(ids).values()} == {"succeeded"}, "finished, not killed"
    assert ledger.effects() == Counter(dict.fromkeys(ids, 1))
    assert "a repeated stop signal is the same stop" in worker.log()
