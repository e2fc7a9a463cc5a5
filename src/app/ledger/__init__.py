"""The job ledger in PostgreSQL: its tables, pools and migrations, and every statement that writes it.

Nothing outside this package changes a row of the ledger: each state change of a job is one
named statement in `queries.sql`, run through `ledger.jobs` (and `ledger.workers` for the
workers' heartbeats). Reads for people (lists, counts) live with the faces that show them.
"""
