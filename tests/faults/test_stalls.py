"""Long tasks and frozen workers: a task may outlive RabbitMQ's consumer timeout, and a frozen
worker holds no job hostage (I3, no limbo), with every effect still once (I2)."""

from __future__ import annotations

import signal
import time
from collections import Counter

from tests.faults.conftest import Conveyor
from tests.support import outages
from tests.support.faults import EFFECT_TASK, post, post_many, wait_for_log

# RabbitMQ's defaults, put back after a test lowers them.
CONSUMER_TIMEOUT_MS = 1_800_000
CHANNEL_TICK_MS = 60_000


def set_consumer_timeout(timeout_ms: int, tick_ms: int) -> None:
    outages.rabbitmqctl("eval", f"application:set_env(rabbit, consumer_timeout, {timeout_ms}).")
    outages.rabbitmqctl("eval", f"application:set_env(rabbit, channel_tick_interval, {tick_ms}).")


def test_a_task_longer_than_the_consumer_timeout_runs_once_and_no_channel_closes(conveyor: Conveyor) -> None:
    ledger = conveyor.ledger
    # Checked every half second, a delivery unacknowledged for 3 s closes its channel.
    set_consumer_timeout(3_000, 500)
    try:
        # One thread: the jobs posted after the long one wait in the worker, past the timeout
        # too, unless it hands them back to the queue first.
        worker = conveyor.workers.start(threads=1, env={"WORKER_HOLD_SECONDS": "1"})
        long = post(conveyor.base_url, EFFECT_TASK, {"sleep_seconds": 10, "progress_every": 1})
        ledger.wait_until(
            lambda: ledger.job(long)["state"] == "running", timeout=30, what="the long job running"
        )
        behind = post_many(conveyor.base_url, EFFECT_TASK, [{"sleep_seconds": 0.1}] * 2)
        jobs = ledger.wait_terminal([long, *behind], timeout=60)
    finally:
        set_consumer_timeout(CONSUMER_TIMEOUT_MS, CHANNEL_TICK_MS)

    assert {job["state"] for job in jobs.values()} == {"succeeded"}
    assert jobs[long]["attempts"] == 1, "ran once"
    assert ledger.effects("started")[long] == 1
    assert ledger.effects() == Counter(dict.fromkeys([long, *behind], 1))
    log = worker.log()
    assert "unavailable" not in log, "no consumer lost its channel"
    assert "PRECONDITION_FAILED" not in log
    assert "went back to the queue" in log, "the jobs waiting behind it were handed back meanwhile"
    assert worker.alive()


def test_a_frozen_workers_prefetched_and_running_jobs_run_elsewhere_and_nothing_runs_twice(
    conveyor: Conveyor, record_property: object
) -> None:
    ledger = conveyor.ledger
    heartbeat = 2  # AMQP heartbeats: RabbitMQ drops a silent connection after about three of them
    frozen = conveyor.workers.start(threads=2, env={"AMQP_HEARTBEAT_SECONDS": str(heartbeat)})
    ids = post_many(conveyor.base_url, EFFECT_TASK, [{"sleep_seconds": 1.0}] * 12)
    ledger.wait_until(lambda: ledger.running(ids) == 2, timeout=30, what="the first worker running two jobs")
    time.sleep(0.3)  # and holding two more, prefetched
    frozen_worker_id = ledger.job(next(i for i in ids if ledger.job(i)["state"] == "running"))["worker_id"]

    frozen.signal_group(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        conveyor.workers.start(threads=4)
        jobs = ledger.wait_terminal(ids, timeout=60)
        last_done = time.monotonic() - stopped_at
    finally:
        frozen.signal_group(signal.SIGCONT)
    record_property("sigstop_to_last_job_done_s", round(last_done, 1))
    print(f"\nfrozen worker: every job done {last_done:.1f}s after SIGSTOP")

    assert Counter(job["state"] for job in jobs.values()) == {"succeeded": len(ids)}
    # The bound: the lease for what it ran (3 s here), about three heartbeats for what it held.
    assert last_done < 3 * heartbeat + 3.0 + 12, f"{last_done:.1f}s"
    taken_over = [job_id for job_id, job in jobs.items() if job["attempts"] == 2]
    assert taken_over, "the jobs it was running were handed to another worker"
    assert all(jobs[job_id]["worker_id"] != frozen_worker_id for job_id in ids)

    wait_for_log(frozen, "late write refused", timeout=20)
    time.sleep(2)
    assert frozen.alive(), "the thawed worker carries on"
    assert ledger.effects() == Counter(dict.fromkeys(ids, 1)), "nothing ran twice in effect"
    final = ledger.jobs(ids)
    assert {job["state"] for job in final.values()} == {"succeeded"}
    assert all(final[job_id]["worker_id"] != frozen_worker_id for job_id in ids), (
        "its late writes were refused"
    )


def test_jobs_claimed_ahead_of_a_long_task_go_to_another_worker_within_a_second(conveyor: Conveyor) -> None:
    ledger = conveyor.ledger
    # One thread: while quick jobs go through it, it claims a few ahead of its thread; then
    # one long job takes the thread, and what it claimed behind that job must not wait for it.
    busy = conveyor.workers.start(threads=1, env={"WORKER_CLAIM_AHEAD": "3", "WORKER_HOLD_SECONDS": "1"})
    quick = post_many(conveyor.base_url, EFFECT_TASK, [{}] * 80)
    ledger.wait_until(lambda: ledger.states(quick)["succeeded"] >= 20, timeout=30, what="quick jobs going")
    long = post(conveyor.base_url, EFFECT_TASK, {"sleep_seconds": 8})
    behind = post_many(conveyor.base_url, EFFECT_TASK, [{}] * 5)
    ledger.wait_until(lambda: ledger.job(long)["state"] == "running", timeout=30, what="the long job running")
    long_started = time.monotonic()
    conveyor.workers.start(threads=2)
    ledger.wait_terminal(behind, timeout=30)
    behind_done = time.monotonic() - long_started
    jobs = ledger.wait_terminal([*quick, long, *behind], timeout=60)

    assert behind_done < 6, f"the jobs behind the long one waited {behind_done:.1f}s: held for it"
    assert {job["state"] for job in jobs.values()} == {"succeeded"}
    assert ledger.effects() == Counter(dict.fromkeys(jobs, 1)), "each ran once"
    wait_for_log(busy, "claims made ahead went back to the queue", timeout=5)
    assert all(jobs[i]["worker_id"] != jobs[long]["worker_id"] for i in behind), "another worker ran them"
