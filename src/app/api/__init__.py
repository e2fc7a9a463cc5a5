"""The HTTP API: accepting jobs, reading them, steering them, and watching the service."""
