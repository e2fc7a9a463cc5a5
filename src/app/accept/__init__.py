"""Accepting new jobs: validating them against their task, fingerprinting keyed requests, storing them.

The HTTP API, the CLI and `task.enqueue` all end here, in the ledger's one INSERT.
"""
