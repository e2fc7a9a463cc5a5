"""The sender's Prometheus metrics, served by the relay's exporter (RELAY_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter

DELIVERIES = Counter(
    "conveyor_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered: a 2xx; failed: to be tried again; dead: the last"
    " attempt failed)",
    ["outcome"],
)
