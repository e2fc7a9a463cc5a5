"""The messages the relay publishes: doorbells that name a job, never carry its payload.

A worker claims the job a message rings for and runs the task and payload the ledger holds,
so a message carries only the job's id, its run, and the task it was published for (Dramatiq
routes it to that actor; the claim refuses a message whose task disagrees with the ledger).
"""

from __future__ import annotations

from dramatiq import Message

from app.ledger.jobs import Publishable


def doorbell(job: Publishable) -> Message[None]:
    return Message(
        queue_name=job.queue,
        actor_name=job.task,
        args=(),
        kwargs={},
        options={"job_id": str(job.id), "run": job.run},
    )
