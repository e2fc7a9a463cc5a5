"""Settings: the only module that reads the environment."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Development defaults that must never reach production: the settings refuse to load with
# ENVIRONMENT=production while one of them is in use.
# Values that once stood in the repository as defaults: anyone can read them, so production
# refuses them (access.keys still verifies keys hashed with the old default, nothing else).
PUBLISHED_SECRETS = frozenset({"conveyor-development-keys-secret-change-me"})
DEVELOPMENT_PASSWORDS = frozenset({"conveyor", "guest", "postgres", "admin", "password", ""})


class Settings(BaseSettings):
    """Every knob of Conveyor, read from environment variables or a `.env` file."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    environment: Literal["development", "production", "test"] = "development"
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/conveyor"
    # Several RabbitMQ nodes separated by `;`, tried in order (again after a node is lost).
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # quorum: every queue replicated over the cluster (no priorities before RabbitMQ 4).
    broker_queue_type: Literal["classic", "quorum"] = "classic"

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_from: str = "Conveyor <noreply@conveyor.localhost>"
    smtp_timeout: float = 10.0

    retry_max_attempts: int = Field(default=5, ge=1, le=100)
    retry_backoff_base: float = Field(default=1.0, ge=0.0)
    retry_backoff_max: float = Field(default=300.0, ge=0.0)

    lease_seconds: float = Field(default=30.0, gt=0.0)
    heartbeat_seconds: float = Field(default=5.0, gt=0.0)
    # A worker is live while its last heartbeat is younger than this many intervals.
    heartbeat_liveness_intervals: float = 3.0

    relay_batch_size: int = Field(default=500, ge=1)
    relay_sweep_seconds: float = Field(default=1.0, gt=0.0)
    # A message published this long ago whose job was never claimed is published again:
    # the claim is idempotent, so a lost message costs a delay, never the job.
    republish_after_seconds: float = Field(default=900.0, gt=0.0)

    relay_metrics_port: int = 9192  # 0: no exporter
    relay_metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, to be scraped
    # AMQP heartbeats: RabbitMQ closes a connection that missed two, so the messages a frozen
    # worker had prefetched go to another worker within about twice this.
    amqp_heartbeat_seconds: int = Field(default=5, ge=1, le=600)

    # Time: retention of finished jobs by state (from finished_at), checked every
    # PRUNE_INTERVAL_SECONDS; rows deleted per statement; idempotency keys' window.
    retain_succeeded_seconds: float = Field(default=604_800.0, gt=0.0)
    retain_cancelled_seconds: float = Field(default=604_800.0, gt=0.0)
    retain_dead_seconds: float = Field(default=2_592_000.0, gt=0.0)
    # Worker and relay rows whose last heartbeat is older than this are forgotten.
    retain_workers_seconds: float = Field(default=86_400.0, gt=0.0)
    # Audit log entries (who did what) older than this are pruned: long enough to answer for a
    # quarter's operator actions, bounded so a busy ledger does not keep them for ever.
    retain_audit_seconds: float = Field(default=7_776_000.0, gt=0.0)
    # Job events (GET /api/v1/events) older than this are pruned; a stream resumed from an older
    # event is answered 410.
    event_retention_seconds: float = Field(default=86_400.0, gt=0.0)
    prune_interval_seconds: float = Field(default=60.0, gt=0.0)
    prune_batch_size: int = Field(default=1000, ge=1, le=100_000)
    # A pause between two pruning statements: a large backlog (a first pass over an old ledger)
    # is deleted beside the work, not instead of it (bench/prune.py measures the trade).
    prune_pause_seconds: float = Field(default=0.05, ge=0.0)
    idempotency_key_ttl_seconds: float = Field(default=86_400.0, gt=0.0)
    # A tick at most this late still fires on its own (a relay that died mid-tick, a short
    # database restart); ticks missed for longer (downtime) are coalesced: only the most
    # recent fires.
    schedule_catch_up_seconds: float = Field(default=5.0, ge=0.0)
    # Limits an operator can rely on: at most this many schedules (a create past it is refused;
    # those declared in code are written anyway and count), and no schedule made through the
    # API or the CLI, or declared in code, ticking more often than this.
    max_schedules: int = Field(default=1000, ge=0)
    min_schedule_interval_seconds: int = Field(default=1, ge=1)

    # Webhooks: each delivery is tried up to WEBHOOK_MAX_ATTEMPTS times, WEBHOOK_BACKOFF_BASE
    # doubling up to WEBHOOK_BACKOFF_MAX between tries (jittered), each request given
    # WEBHOOK_TIMEOUT_SECONDS in all; at most WEBHOOK_CONCURRENCY requests in flight per relay.
    # WEBHOOK_ALLOW_PRIVATE: targets on loopback, private, link-local addresses allowed (unset:
    # only outside production).
    webhook_max_attempts: int = Field(default=10, ge=1, le=100)
    webhook_backoff_base: float = Field(default=30.0, ge=0.0)
    webhook_backoff_max: float = Field(default=21_600.0, ge=0.0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0.0, le=300.0)
    webhook_concurrency: int = Field(default=16, ge=1, le=1000)
    webhook_poll_seconds: float = Field(default=0.5, gt=0.0)
    webhook_allow_private: bool | None = None

    max_body_bytes: int = Field(default=1_048_576, ge=1)
    # Jobs in one `POST /api/v1/jobs/batch` (and in each transaction of `conveyor enqueue
    # --file`): one INSERT each, so a batch holds its connection only for milliseconds.
    max_batch_jobs: int = Field(default=1000, ge=1, le=100_000)
    # Steps in one workflow: all are inserted by one statement, and a step's success, death or
    # replay walks the steps after it in the statement that records it.
    max_workflow_steps: int = Field(default=1000, ge=1, le=100_000)
    # Registers app.tasks.diagnostics (fault-test tasks); never on in production.
    diagnostic_tasks: bool = False
    api_base_url: str = "http://127.0.0.1:8000"

    worker_processes: int = Field(default=1, ge=1)
    worker_threads: int = Field(default=8, ge=1)
    # Messages RabbitMQ delivers to a worker process ahead of its claims; 0: four per thread
    # (Celery's default), as many as it may claim at once. Fewer for long tasks: a worker
    # whose threads are all busy holds these for up to WORKER_HOLD_SECONDS.
    worker_prefetch: int = Field(default=0, ge=0)
    # Jobs a worker process may claim beyond its threads, so that a thread never waits for a
    # claim's round trip; at most what its threads start in a second at the current pace,
    # and a claimed job not started within a second goes back to the queue. -1: three per
    # thread; 0: claim only for a free thread.
    worker_claim_ahead: int = Field(default=-1, ge=-1)
    # A message a worker holds this long without a free thread to run it goes back to the
    # queue for another worker (well within RabbitMQ's consumer_timeout, 30 min by default).
    worker_hold_seconds: float = Field(default=300.0, gt=0.0)
    worker_metrics_port: int = 9191  # 0: no exporter
    worker_metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, to be scraped
    worker_shutdown_seconds: float = 30.0
    # How long a running job whose cancellation was asked may take to stop on its own (a task
    # that checks `job.cancel_requested`) before an exception is raised in its thread.
    cancel_grace_seconds: float = Field(default=10.0, ge=0.0)

    db_pool_size: int = 10
    # The API's bound on connecting, waiting for a pooled connection, and one statement.
    db_timeout_seconds: float = Field(default=5.0, gt=0.0)
    # After a standby is promoted, every process writes to the new primary within this: TCP
    # keepalives and a send timeout end connections to a primary that vanished without a word,
    # a connection that finds itself on a read-only server is dropped, reconnects are retried.
    db_failover_seconds: float = Field(default=30.0, ge=3.0)
    # Accepted jobs waiting for their batch's INSERT; past it the API answers 503 at once.
    intake_max_pending: int = Field(default=10_000, ge=1)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    # Access: API keys are random tokens; the ledger keeps only an HMAC of each, keyed with this
    # pepper (change it and every key stops working). Empty: one generated at first start and
    # kept in the ledger (conveyor_secrets), so no secret ships with the code; set, 32+
    # characters in production.
    keys_secret: SecretStr = SecretStr("")
    # How long an API process trusts a key it verified: a revocation takes effect within it.
    keys_cache_seconds: float = Field(default=5.0, ge=0.0, le=300.0)
    # Requests per client key and API process, in `limits` notation ("1000/second;50000/minute");
    # empty: no limit.
    rate_limit: str = "1000/second"
    # A dashboard sign-in lasts this long.
    session_seconds: int = Field(default=8 * 3600, ge=60)
    # Requests without a valid key (and failed sign-ins), per client address and in all, per
    # API process, in `limits` notation; past either, 429 before any key is looked up. A flood
    # of made-up keys costs a dictionary lookup, not a database round trip.
    refusal_limit_per_address: str = "30/minute"
    refusal_limit_global: str = "600/minute"
    # How long an API process remembers a key id that does not exist, or a key that did not
    # match (wrong secret, revoked), so that asking again does not reach the database.
    refusal_memory_seconds: float = Field(default=60.0, ge=0.0, le=3600.0)
    # Addresses whose X-Forwarded-Proto and X-Forwarded-For `conveyor api` believes (uvicorn's
    # forwarded_allow_ips: comma-separated addresses or networks, "*" for any): the proxies in
    # front of it. Only then does https at the proxy make the session cookie Secure.
    forwarded_allow_ips: str = "127.0.0.1"
    # /docs and /openapi.json: on, except in production unless asked for.
    api_docs: bool | None = None
    # The key a client command (`conveyor loadtest`) sends to the API.
    conveyor_key: SecretStr = SecretStr("")

    # Traces (docs/tracing.md): set, each process exports OpenTelemetry spans over OTLP/HTTP
    # (protobuf) to this base URL (`/v1/traces` is added), or to the traces URL when that is
    # set; unset, nothing is traced and no job records a trace context. The SDK reads the
    # other OTEL_* variables (headers, sampler, batch sizes, resource attributes) itself.
    otel_exporter_otlp_endpoint: str = ""
    otel_exporter_otlp_traces_endpoint: str = ""
    # Set: the SDK's sampler by that name (OTEL_TRACES_SAMPLER_ARG its argument) instead of
    # Conveyor's, which keeps every trace and drops a database statement outside any of them.
    otel_traces_sampler: str = ""

    @model_validator(mode="after")
    def _no_development_secrets_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        problems = []
        if self.keys_secret.get_secret_value() and len(self.keys_secret) < 32:
            problems.append("KEYS_SECRET is shorter than 32 characters (or leave it empty: one is generated)")
        if self.keys_secret.get_secret_value() in PUBLISHED_SECRETS:
            problems.append("KEYS_SECRET is a value published in Conveyor's repository")
        nodes = [url for url in self.broker_url.split(";") if url.strip()]  # a cluster: every node
        for name, url in (("DATABASE_URL", self.database_url), *(("BROKER_URL", node) for node in nodes)):
            if (urlsplit(url.strip()).password or "") in DEVELOPMENT_PASSWORDS:
                problems.append(f"{name} has no password or a development one")
        if self.diagnostic_tasks:
            problems.append("DIAGNOSTIC_TASKS is on (fault-test tasks)")
        if problems:
            raise ValueError("refusing to start in production: " + "; ".join(dict.fromkeys(problems)))
        return self

    @property
    def docs_enabled(self) -> bool:
        return self.api_docs if self.api_docs is not None else self.environment != "production"

    @property
    def webhooks_may_reach_private(self) -> bool:
        if self.webhook_allow_private is not None:
            return self.webhook_allow_private
        return self.environment != "production"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
