"""The ledger's statements, loaded once from `queries.sql` and bound to names here.

Every block of the file is bound below, and every name below has its block: the module refuses
to load otherwise, so a statement cannot be written twice or left behind unused.
"""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Final

_HEADER = re.compile(r"^-- name: ([a-z_]+)\n", re.MULTILINE)


def load(text: str) -> dict[str, str]:
    """The statements of a queries file by name, without their comments and indentation.

    What is sent is what the server needs: psycopg parses a statement's placeholders once and
    keeps the parse only for statements of up to 4 kB (`MAX_CACHED_STATEMENT_LENGTH`); a longer
    one is parsed again at every execution, on the worker's hot path."""
    parts = _HEADER.split(text)[1:]
    statements: dict[str, str] = {}
    for name, block in zip(parts[::2], parts[1::2], strict=True):
        if name in statements:
            raise ValueError(f"statement {name!r} is written twice")
        lines = (_without_comment(line).strip() for line in block.splitlines())
        statements[name] = "\n".join(line for line in lines if line)
    return statements


def _without_comment(line: str) -> str:
    """A line without its `--` comment (a `--` inside a quoted literal is kept)."""
    quoted = False
    for at, char in enumerate(line):
        if char == "'":
            quoted = not quoted
        elif not quoted and line.startswith("--", at):
            return line[:at]
    return line


_statements = load(files("app.ledger").joinpath("queries.sql").read_text(encoding="utf-8"))


def _bind(name: str) -> str:
    return _statements.pop(name)


INSERT_JOBS: Final = _bind("insert_jobs")
NOTIFY_RELAY: Final = _bind("notify_relay")
FIND_BY_IDEMPOTENCY_KEY: Final = _bind("find_by_idempotency_key")
FIND_UNIQUE_HOLDERS: Final = _bind("find_unique_holders")
UNIQUE_HOLDER_OF_JOB: Final = _bind("unique_holder_of_job")
RELEASE_IDEMPOTENCY_KEY: Final = _bind("release_idempotency_key")
CLAIM: Final = _bind("claim")
LOCK_FLOW_KEYS: Final = _bind("lock_flow_keys")
CLAIM_LIMITED: Final = _bind("claim_limited")
JOB_TASK: Final = _bind("job_task")
SUCCEED: Final = _bind("succeed")
RETRY: Final = _bind("retry")
BURY: Final = _bind("bury")
REPORT_PROGRESS: Final = _bind("report_progress")
RENEW_LEASES: Final = _bind("renew_leases")
RELEASE: Final = _bind("release")
UNCLAIM: Final = _bind("unclaim")
TAKE_PUBLISHABLE: Final = _bind("take_publishable")
TAKE_LIMITED: Final = _bind("take_limited")
TAKE_DEAD_LETTERS: Final = _bind("take_dead_letters")
SECONDS_UNTIL_NEXT_DUE: Final = _bind("seconds_until_next_due")
REAP_EXPIRED_LEASES: Final = _bind("reap_expired_leases")
REARM_STALE_PUBLICATIONS: Final = _bind("rearm_stale_publications")
REARM_FORGOTTEN: Final = _bind("rearm_forgotten")
HOLD_REPUBLISHABLE: Final = _bind("hold_republishable")
REPUBLISH_QUEUE: Final = _bind("republish_queue")
COUNT_REPUBLISHABLE: Final = _bind("count_republishable")
CANCEL: Final = _bind("cancel")
REQUEST_CANCEL: Final = _bind("request_cancel")
LISTEN_FOR_CANCELS: Final = _bind("listen_for_cancels")
CANCEL_REQUESTS: Final = _bind("cancel_requests")
FINISH_CANCELLED: Final = _bind("finish_cancelled")
REPLAY_DEAD: Final = _bind("replay_dead")
DISCARD_DEAD: Final = _bind("discard_dead")
TAKE_STALE_DEAD_LETTERS: Final = _bind("take_stale_dead_letters")
FORGET_STALE_DEAD_LETTERS: Final = _bind("forget_stale_dead_letters")
STORE_ARTIFACT: Final = _bind("store_artifact")
CLEAR_ARTIFACT: Final = _bind("clear_artifact")
STORE_ARTIFACT_CHUNK: Final = _bind("store_artifact_chunk")
CLOSE_ARTIFACT: Final = _bind("close_artifact")
JOB_CLIENT: Final = _bind("job_client")
JOB_STATE: Final = _bind("job_state")
JOB_STATES: Final = _bind("job_states")
UPSERT_WORKER: Final = _bind("upsert_worker")
STOP_WORKER: Final = _bind("stop_worker")
UPSERT_RELAY: Final = _bind("upsert_relay")
STOP_RELAY: Final = _bind("stop_relay")
INSERT_KEY: Final = _bind("insert_key")
FIND_KEY: Final = _bind("find_key")
LIVE_KEY_SCOPES: Final = _bind("live_key_scopes")
REHASH_KEY: Final = _bind("rehash_key")
TOUCH_KEY: Final = _bind("touch_key")
REVOKE_KEY: Final = _bind("revoke_key")
INSERT_SECRET: Final = _bind("insert_secret")
FIND_SECRET: Final = _bind("find_secret")
INSERT_SESSION: Final = _bind("insert_session")
FIND_SESSION: Final = _bind("find_session")
DELETE_SESSION: Final = _bind("delete_session")
LIST_KEYS: Final = _bind("list_keys")
DATABASE_NOW: Final = _bind("database_now")
LOCK_SCHEDULE_COUNT: Final = _bind("lock_schedule_count")
INSERT_SCHEDULE: Final = _bind("insert_schedule")
UPSERT_DECLARED_SCHEDULES: Final = _bind("upsert_declared_schedules")
TAKE_DUE_SCHEDULES: Final = _bind("take_due_schedules")
ADVANCE_SCHEDULES: Final = _bind("advance_schedules")
SECONDS_UNTIL_NEXT_TICK: Final = _bind("seconds_until_next_tick")
PAUSE_SCHEDULE: Final = _bind("pause_schedule")
RESUME_SCHEDULE: Final = _bind("resume_schedule")
DELETE_SCHEDULE: Final = _bind("delete_schedule")
PAUSE_QUEUE: Final = _bind("pause_queue")
RESUME_QUEUE: Final = _bind("resume_queue")
INSERT_WEBHOOK: Final = _bind("insert_webhook")
LIST_WEBHOOKS: Final = _bind("list_webhooks")
DELETE_WEBHOOK: Final = _bind("delete_webhook")
FAN_OUT_EVENTS: Final = _bind("fan_out_events")
TAKE_DELIVERIES: Final = _bind("take_deliveries")
FINISH_DELIVERIES: Final = _bind("finish_deliveries")
REPLAY_DELIVERY: Final = _bind("replay_delivery")
DELIVERY_STATE: Final = _bind("delivery_state")
DELIVERIES_PAGE: Final = _bind("deliveries_page")
FAILED_DELIVERIES: Final = _bind("failed_deliveries")
PRUNE_DELIVERIES: Final = _bind("prune_deliveries")
INSERT_AUDIT_ENTRY: Final = _bind("insert_audit_entry")
AUDIT_PAGE: Final = _bind("audit_page")
PRUNE_AUDIT_LOG: Final = _bind("prune_audit_log")
COUNT_PRUNABLE_AUDIT: Final = _bind("count_prunable_audit")
PRUNE_JOBS: Final = _bind("prune_jobs")
COUNT_PRUNABLE: Final = _bind("count_prunable")
RELEASE_EXPIRED_IDEMPOTENCY_KEYS: Final = _bind("release_expired_idempotency_keys")
PRUNE_WORKERS: Final = _bind("prune_workers")
PRUNE_RELAYS: Final = _bind("prune_relays")
PRUNE_SESSIONS: Final = _bind("prune_sessions")
READ_EVENTS: Final = _bind("read_events")
EVENT_EXISTS: Final = _bind("event_exists")
PRUNE_EVENTS: Final = _bind("prune_events")
COUNT_PRUNABLE_EVENTS: Final = _bind("count_prunable_events")
INSERT_WORKFLOW: Final = _bind("insert_workflow")
WORKFLOW_OF_KEY: Final = _bind("workflow_of_key")
CANCEL_WORKFLOW: Final = _bind("cancel_workflow")
REQUEST_CANCEL_WORKFLOW: Final = _bind("request_cancel_workflow")
CANCEL_DOWNSTREAM: Final = _bind("cancel_downstream")
REVIVE_DOWNSTREAM: Final = _bind("revive_downstream")
FAILED_STEPS: Final = _bind("failed_steps")
SETTLE_WAITING_STEPS: Final = _bind("settle_waiting_steps")
UPSTREAM_RESULTS: Final = _bind("upstream_results")
PRUNE_WORKFLOWS: Final = _bind("prune_workflows")

if _statements:
    raise RuntimeError(f"queries.sql has statements no name binds: {sorted(_statements)}")
