"""The load test's arithmetic: percentiles, loss and exit codes."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime, timedelta

from app.cli.load import EXIT_LOST, EXIT_NOT_ACCEPTED, Outcome, PostResult, percentile, summarize

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def outcome(state: str, seconds: float | None) -> Outcome:
    finished = None if seconds is None else T0 + timedelta(seconds=seconds)
    return Outcome(state, T0, finished)


def test_an_accepted_job_that_never_ended_is_lost_and_fails_the_run() -> None:
    posts = PostResult(accepted={"a": 0.01, "b": 0.02, "c": 0.03}, seconds=1.0)
    summary = summarize("t", 3, 3.0, posts, {"a": outcome("succeeded", 1.0), "b": outcome("dead", 2.0)}, 5.0)
    assert summary.lost == 1
    assert summary.states == {"succeeded": 1, "dead": 1, "cancelled": 0}
    assert summary.to_succeeded == [1.0]
    assert summary.exit_code == EXIT_LOST


def test_a_run_with_refused_posts_but_no_loss_exits_with_its_own_code() -> None:
    posts = PostResult(accepted={"a": 0.01}, errors=Counter({"503": 2}), seconds=1.0)
    summary = summarize("t", 3, 3.0, posts, {"a": outcome("succeeded", 0.5)}, 2.0)
    assert summary.lost == 0
    assert summary.exit_code == EXIT_NOT_ACCEPTED


def test_a_run_where_every_job_ended_passes_and_reports_its_throughput() -> None:
    posts = PostResult(accepted={str(i): 0.01 for i in range(4)}, seconds=1.0)
    outcomes = {str(i): outcome("succeeded", 0.5 * (i + 1)) for i in range(4)}
    summary = summarize("t", 4, 4.0, posts, outcomes, 3.0)
    assert summary.exit_code == 0
    assert summary.succeeded_per_second == 4 / 2.0
