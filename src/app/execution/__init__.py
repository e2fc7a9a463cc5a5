"""Running jobs in a Dramatiq worker: claim, run, finish, heartbeat, and the worker's metrics."""
