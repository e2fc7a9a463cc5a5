"""DESIGN.md's performance budget, each goal beside what one run of bench/run_all.py measured.

A goal whose measurement is missing says why ("not measured: ..."), never passes silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import accept
import bulk
import drain
import durable
import events
import timing
from _harness import table

Measured = float | str | None  # a number, or the reason there is none


@dataclass
class Run:
    """Everything one run measured; a suite that failed or was left out leaves its reason."""

    jobs: int
    drained: list[drain.DrainResult] = field(default_factory=list)
    peers: list[durable.PeerResult] = field(default_factory=list)
    bulk: bulk.BulkResult | None = None
    accepted: list[accept.AcceptResult] = field(default_factory=list)
    timed: timing.TimingResult | None = None
    events: events.EventsResult | None = None
    cluster: dict[str, float] | None = None  # label -> median drain jobs/s
    skipped: dict[str, str] = field(default_factory=dict)  # suite -> why it has no results

    def why(self, suite: str, what: str) -> str:
        return self.skipped.get(suite, f"no {what}")


@dataclass
class Budget:
    rows: list[list[object]] = field(default_factory=list)

    def add(
        self, goal: str, measured: Measured, target: float, fmt: str, higher_is_better: bool = True
    ) -> None:
        sign = ">=" if higher_is_better else "<="
        wanted = f"{sign} {fmt.format(target)}"
        if isinstance(measured, str) or measured is None or math.isnan(measured):
            why = " ".join(measured.split())[:160] if isinstance(measured, str) else "no value"
            self.rows.append([goal, "-", wanted, f"not measured: {why}"])
            return
        met = measured >= target if higher_is_better else measured <= target
        self.rows.append([goal, fmt.format(measured), wanted, "met" if met else "NOT met"])

    def render(self) -> str:
        met = sum(1 for row in self.rows if row[3] == "met")
        unmeasured = sum(1 for row in self.rows if str(row[3]).startswith("not measured"))
        return "\n".join(
            [
                "## The budget (DESIGN.md, Performance budget), from this run",
                "",
                table(["goal", "measured", "target", "verdict"], self.rows),
                "",
                f"{met} of {len(self.rows)} goals met; {unmeasured} not measured.",
                "",
            ]
        )


def _ratio(mine: Measured, theirs: Measured) -> Measured:
    if isinstance(mine, str) or isinstance(theirs, str):
        reasons = [m for m in (mine, theirs) if isinstance(m, str)]
        return "; ".join(dict.fromkeys(reasons))
    if not mine or not theirs:
        return None
    return mine / theirs


def drain_goals(run: Run, budget: Budget) -> None:
    by = {r.system: r for r in run.drained}
    no_drain = run.why("drain", "drain")

    def rate(system: str, launch: bool = False) -> Measured:
        result = by.get(system)
        if result is None:
            return no_drain if not run.drained else f"{system} did not drain"
        return result.rate_with_start_up if launch else result.rate

    n = f"{run.jobs:,}"
    budget.add(
        f"drain ({n} jobs) vs raw Dramatiq", _ratio(rate("conveyor"), rate("dramatiq")), 1.0, "{:.2f}x"
    )
    celeries = [by[s] for s in ("celery", "celery-prefork") if s in by]
    fastest: Measured = max(celeries, key=lambda r: r.rate).rate if celeries else rate("celery")
    name = max(celeries, key=lambda r: r.rate).system if celeries else "celery"
    budget.add(
        f"drain vs the fastest Celery worker ({name})", _ratio(rate("conveyor"), fastest), 1.0, "{:.2f}x"
    )
    peers = {p.peer: p for p in run.peers}
    targets = (("oban", 1.0, ""), ("chancy", 1.0, ""), ("pgqueuer", 0.5, " (stretch)"))
    for peer, target, note in targets:
        result = peers.get(peer)
        theirs: Measured = run.skipped.get("peers", "not among --peers")
        if result is not None:
            theirs = result.drain_from_launch if result.ok else result.error
        label = f"drain from launch vs {durable.LABELS[peer]}{note}"
        budget.add(label, _ratio(rate("conveyor", launch=True), theirs), target, "{:.2f}x")
    conveyor = by.get("conveyor")
    tree: Measured = conveyor.tree_rss_mib if conveyor else no_drain
    budget.add(f"worker process tree RSS after {n} jobs (MiB)", tree, 100.0, "{:.1f}", False)
    flow, live = rate("conveyor-flow"), rate("conveyor-live")
    budget.add("drain over 100 keys, limit 2 each, vs no limits", _ratio(flow, live), 0.8, "{:.2f}x")


def bulk_goals(run: Run, budget: Budget) -> None:
    result = run.bulk
    if result is None:
        why = run.why("bulk", "bulk run")
        budget.add("enqueue_many vs PgQueuer's bulk enqueue", why, 0.5, "{:.2f}x")
        budget.add("POST /api/v1/jobs/batch, 1,000 a request (jobs/s)", why, 20_000, "{:,.0f}")
        return
    pgqueuer: Measured = result.pgqueuer
    if pgqueuer is None:
        pgqueuer = "PgQueuer: " + result.not_measured.get("pgqueuer", "not among --peers")
    budget.add(
        "enqueue_many vs PgQueuer's bulk enqueue", _ratio(result.enqueue_many, pgqueuer), 0.5, "{:.2f}x"
    )
    budget.add("POST /api/v1/jobs/batch, 1,000 a request (jobs/s)", result.batch_route, 20_000, "{:,.0f}")


def accept_goals(run: Run, budget: Budget) -> None:
    rates = {r.system: r.rate for r in run.accepted}
    no_accept = run.why("accept", "accept run")

    def rate(system: str) -> Measured:
        return rates.get(system) or (no_accept if not run.accepted else f"{system} did not run")

    budget.add(
        "accept (with a key) vs bare FastAPI 202", _ratio(rate("conveyor"), rate("bare")), 0.5, "{:.2f}x"
    )
    celeries = {s: rates[s] for s in ("celery", "celery-async") if rates.get(s)}
    fastest: Measured = max(celeries.values()) if celeries else rate("celery")
    name = max(celeries, key=lambda s: celeries[s]) if celeries else "celery"
    label = f"accept vs the faster FastAPI + Celery .delay() ({name})"
    budget.add(label, _ratio(rate("conveyor"), fastest), 2.0, "{:.2f}x")


def latency_goals(run: Run, budget: Budget) -> None:
    measured: dict[str, Measured] = {}
    if run.timed is not None:
        measured.update(run.timed.goals())
    why = run.why("timing", "timing run")
    rows: list[tuple[str, str, float]] = [
        ("POST p99 at 200 req/s (ms)", "post p99", 20.0),
        ("accept -> started p99 at 200 jobs/s (ms)", "accept -> started p99", 25.0),
        ("retry start after its due time, max (ms)", "retry lateness max", 100.0),
        ("schedule's job start after its tick, max (ms)", "tick lateness max", 100.0),
    ]
    for goal, key, target in rows:
        budget.add(goal, measured.get(key, why), target, "{:.1f}", False)
    told: Measured = run.why("events", "events run")
    if run.events is not None:
        told = events.EventsResult.p(run.events.latency_ms.get("all", []), 0.99)
    budget.add("event on /api/v1/events after its change, p99 (ms)", told, 50.0, "{:.1f}", False)


def cluster_goal(run: Run, budget: Budget) -> None:
    theirs: Measured = run.why("cluster", "cluster run")
    mine: Measured = theirs
    if run.cluster is not None:
        mine = run.cluster.get("3-node quorum cluster")
        theirs = run.cluster.get("1 classic node")
    budget.add("drain on a 3-node quorum cluster vs one classic node", _ratio(mine, theirs), 0.5, "{:.2f}x")


SECTIONS: tuple[Callable[[Run, Budget], None], ...] = (
    drain_goals,
    bulk_goals,
    accept_goals,
    latency_goals,
    cluster_goal,
)


def goals(run: Run) -> str:
    budget = Budget()
    for section in SECTIONS:
        section(run, budget)
    return budget.render()
