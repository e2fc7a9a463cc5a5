"""Short-lived AMQP connections for operators and probes: one attempt, bounded by timeouts."""

from __future__ import annotations

import pika

# Container healthchecks and Kubernetes probes give a probe about 5 s; answer well before.
PROBE_TIMEOUT_SECONDS = 3.0


def connect(broker_url: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> pika.BlockingConnection:
    """A connection that fails within `timeout` seconds when the broker is away or blocked."""
    params = pika.URLParameters(broker_url)
    params.connection_attempts = 1
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.blocked_connection_timeout = timeout
    return pika.BlockingConnection(params)
