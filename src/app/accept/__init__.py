"""The HTTP accept path: jobs from `POST /api/v1/jobs` written by group commit (`intake`).

What makes a new job (validation, fingerprint, the one INSERT) is `app.jobs.enqueue`, shared
by the API, the CLI and `task.enqueue`.
"""
