"""Moving a vhost's queues to the type BROKER_QUEUE_TYPE asks for (`conveyor queues migrate`).

RabbitMQ cannot change a queue's type in place, so a queue of the other type is deleted and
declared again. What it held goes with it, and that is safe because messages are doorbells: the
ledger holds every job, and knows which ones were published and not claimed. Once the queues of
a queue (`<queue>`, `.DQ`, `.XQ`) are declared again, those jobs are marked unpublished and the
relay, woken at commit, publishes them again at once; the dead jobs' copies in `.XQ` are made
again the same way, from the ledger's dead jobs still within the copies' TTL. Those jobs are
locked from before the first delete to that commit (`hold`): a relay already on the new type
would otherwise publish one into a re-made queue before the marking, which would count it and
have it published twice. Workers consuming
a queue would declare it again with their own setting meanwhile: the migration refuses to start
while a queue it would re-make has consumers, unless forced.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from uuid import UUID

from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL
from dramatiq.common import xq_name
from sqlalchemy.ext.asyncio import AsyncConnection

from app.ledger import flow
from app.transport import rabbitmq
from app.transport.rabbitmq import QueueState


@dataclass(frozen=True)
class Step:
    """What the migration does to one queue: keep it, declare it (absent), or re-make it."""

    state: QueueState
    wanted: str

    @property
    def has(self) -> str | None:
        return self.state.has(self.wanted)

    @property
    def action(self) -> str:
        if not self.state.exists:
            return "declare"
        return "remake" if self.state.mismatch else "keep"


@dataclass(frozen=True)
class Republish:
    """What the ledger publishes again for one queue whose queues were declared again."""

    queue: str
    jobs: bool  # `<queue>` or `<queue>.DQ` was declared again: its published jobs
    dead: bool  # `<queue>.XQ` was declared again: its dead jobs' copies


def plan(broker_url: str, queues: Iterable[str], wanted: str) -> list[Step]:
    """Every queue of `queues` (with its .DQ and .XQ) and what the migration would do to it."""
    return [Step(state, wanted) for state in rabbitmq.inspect(broker_url, queues, wanted)]


def busy(steps: Sequence[Step]) -> list[Step]:
    """The queues to re-make that workers consume."""
    return [step for step in steps if step.action == "remake" and step.state.consumers]


def republishing(steps: Sequence[Step]) -> list[Republish]:
    """For each queue with a queue declared again, what the ledger must publish again."""
    changed: dict[str, Republish] = {}
    for step in steps:
        if step.action == "keep":
            continue
        queue = step.state.queue
        before = changed.get(queue, Republish(queue, jobs=False, dead=False))
        if step.state.name == xq_name(queue):
            changed[queue] = Republish(queue, before.jobs, dead=True)
        else:
            changed[queue] = Republish(queue, jobs=True, dead=before.dead)
    return list(changed.values())


def remake(broker_url: str, step: Step) -> int:
    """Declare the step's queue with the wanted type (deleting it first when it exists with the
    other); how many messages went with it."""
    arguments = dict(rabbitmq.family(step.state.queue, step.wanted))[step.state.name]
    if step.action == "declare":
        rabbitmq.redeclare(broker_url, step.state.name, arguments, delete=False)
        return 0
    return rabbitmq.redeclare(broker_url, step.state.name, arguments)


async def hold(conn: AsyncConnection, what: Republish) -> list[UUID]:
    """Lock, until `conn`'s transaction ends, the jobs whose messages re-making the queue's queues
    could take along (no relay publishes them meanwhile); their ids, for `republish`."""
    return await flow.hold_republishable(
        conn, what.queue, jobs=what.jobs, dead=what.dead, dead_ttl_seconds=DEAD_MESSAGE_TTL / 1000
    )


async def republish(
    conn: AsyncConnection, what: Republish, held: Sequence[UUID] = (), *, apply: bool = True
) -> tuple[int, int]:
    """Mark unpublished what the re-made queues lost, of the jobs `held` since before (`hold`):
    (jobs, dead-letter copies); with `apply` False, only count them (of all the queue's jobs)."""
    return await flow.republish_queue(
        conn,
        what.queue,
        jobs=what.jobs,
        dead=what.dead,
        dead_ttl_seconds=DEAD_MESSAGE_TTL / 1000,
        held=held,
        apply=apply,
    )
