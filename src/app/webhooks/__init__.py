"""Webhooks: subscriptions, the fan-out of job events into deliveries, and the sender that
POSTs them, signed, from the relay process (never from a request)."""
