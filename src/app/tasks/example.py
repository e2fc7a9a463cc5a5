"""The example tasks: an email, a long export, a flaky task, the cheapest echo, a workflow's
fan-in, a sleep, a spin, and an account sync that is unique while in flight."""

from __future__ import annotations

import re
import smtplib
import time
from email.message import EmailMessage
from typing import Annotated, Any

from pydantic import AfterValidator, EmailStr, Field
from sqlalchemy import func, select

from app.errors import PermanentError, TransientError
from app.jobs.context import JobContext
from app.jobs.registry import Payload, Queue, task
from app.ledger.engines import sync_engine
from app.ledger.schema import JobState, job_attempts
from app.logs import get_logger
from app.settings import get_settings
from app.tasks import exporting
from app.tracing import sending_mail

log = get_logger("conveyor.tasks")


# What ends a header line somewhere: CR and LF, and whatever else Python's email package (and
# many a mail server) takes as a line break. A subject holding one would split its header.
HEADER_BREAKS = frozenset("\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029")
# An address in a server's reply: kept out of logs and of `last_error`.
ADDRESS = re.compile(r"[^\s<>()\[\],;:\"']+@[^\s<>()\[\],;:\"']+")


def one_header_line(value: str) -> str:
    if any(char in HEADER_BREAKS for char in value):
        raise ValueError("must be one line: no CR, LF or other line-breaking character")
    if any(ord(char) < 32 and char != "\t" for char in value):
        raise ValueError("must not contain control characters")
    return value


class EmailPayload(Payload):
    to: EmailStr = Field(examples=["ada@example.com"])
    subject: Annotated[
        str, Field(min_length=1, max_length=998, examples=["Welcome"]), AfterValidator(one_header_line)
    ]
    body: str = Field(max_length=100_000, examples=["Hello!"])


def without_addresses(text: str) -> str:
    return ADDRESS.sub("<address>", text)


@task(EmailPayload, queue=Queue.EMAIL, max_attempts=5)
def send_email(payload: EmailPayload, job: JobContext) -> dict[str, Any]:
    """Send one message over SMTP: connection errors and 4xx replies retry, 5xx replies are final."""
    settings = get_settings()
    try:
        message = EmailMessage()
        message["From"] = settings.smtp_from
        message["To"] = payload.to
        message["Subject"] = payload.subject
        # A stable Message-ID lets a receiver drop the copy a crashed attempt may have sent.
        message["Message-ID"] = f"<{job.job_id}@conveyor>"
        message.set_content(payload.body)
    except (ValueError, TypeError) as error:  # no later attempt can build it either
        raise PermanentError(f"the message cannot be built: {without_addresses(str(error))}") from error
    try:
        with (
            sending_mail(settings.smtp_host, settings.smtp_port, recipients=1),
            smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout) as smtp,
        ):
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as error:
        codes = [code for code, _ in error.recipients.values()]
        replies = "; ".join(_reply(code, text) for code, text in error.recipients.values())
        if all(500 <= code < 600 for code in codes):
            log.error("smtp refused the recipient for good", codes=codes)
            raise PermanentError(f"recipient refused: {replies}") from error
        log.warning("smtp refused the recipient for now", codes=codes)
        raise TransientError(f"recipient deferred: {replies}") from error
    except smtplib.SMTPResponseException as error:
        reply = _reply(error.smtp_code, error.smtp_error)
        if 500 <= error.smtp_code < 600:
            log.error("smtp rejected the message for good", reply=reply)
            raise PermanentError(f"SMTP {reply}") from error
        log.warning("smtp deferred the message", reply=reply)
        raise TransientError(f"SMTP {reply}") from error
    except (TimeoutError, smtplib.SMTPException, OSError) as error:
        reason = without_addresses(str(error))
        log.warning("smtp server unreachable", error=reason)
        raise TransientError(f"SMTP connection failed: {reason}") from error
    log.info("email sent", message_id=message["Message-ID"])
    return {"message_id": message["Message-ID"]}


def _reply(code: int, text: bytes | str) -> str:
    """An SMTP reply for logs and `last_error`: the code and the reason, addresses left out."""
    reason = text.decode(errors="replace") if isinstance(text, bytes) else text
    return f"{code} {without_addresses(reason)}"


class ExportPayload(Payload):
    state: JobState | None = None
    task: str | None = Field(default=None, max_length=200)
    chunk_size: int = Field(default=1000, ge=10, le=10_000)


@task(ExportPayload, queue=Queue.EXPORTS, max_attempts=3, time_limit_seconds=3600, one_per_client=True)
def export_jobs(payload: ExportPayload, job: JobContext) -> dict[str, Any]:
    """Write the job history as CSV in chunks, reporting progress; the file is kept with the job.

    It holds what the job's client may read (every job with `read`, else its own), and each
    client has one export queued or running at a time.
    """
    state = None if payload.state is None else payload.state.value
    return exporting.export(job, state, payload.task, payload.chunk_size)


class FlakyPayload(Payload):
    fail_times: int = Field(ge=0, le=100, examples=[2])
    permanent: bool = False


@task(FlakyPayload)
def flaky(payload: FlakyPayload, job: JobContext) -> dict[str, Any]:
    """Fail the first `fail_times` attempts (transiently, or permanently), then succeed.

    Attempts are counted over every run of the job, so a replay after the last failure
    succeeds: the dead-letter demo in one task.
    """
    with sync_engine().connect() as conn:
        count = select(func.count()).where(job_attempts.c.job_id == job.token.job_id)
        attempt = int(conn.execute(count).scalar_one())
    if attempt <= payload.fail_times:
        if payload.permanent:
            raise PermanentError(f"flaky: permanent failure on attempt {attempt}")
        raise TransientError(f"flaky: failure {attempt} of {payload.fail_times}")
    return {"attempts": attempt}


class EchoPayload(Payload):
    message: str = Field(max_length=10_000, examples=["hello"])


@task(EchoPayload)
def echo(payload: EchoPayload, job: JobContext) -> dict[str, Any]:
    """Return the message: the cheapest task, for load tests."""
    return {"message": payload.message}


class GatherPayload(Payload):
    pass


@task(GatherPayload)
def gather(payload: GatherPayload, job: JobContext) -> dict[str, Any]:
    """Return what the steps it comes after returned: the fan-in step of workflows."""
    return {"upstream": job.upstream_results()}


class SleepPayload(Payload):
    seconds: float = Field(ge=0, le=3600, examples=[1.5])


@task(SleepPayload, max_attempts=3, time_limit_seconds=3700)
def sleep(payload: SleepPayload, job: JobContext) -> dict[str, Any]:
    """Sleep, reporting progress: a long job for demos and fault tests. It stops within a second
    when its cancellation is asked (a cooperative task)."""
    deadline = time.monotonic() + payload.seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.25))
        job.raise_if_cancelled()
        done = payload.seconds - max(deadline - time.monotonic(), 0)
        job.progress(100 * done / payload.seconds)
    return {"slept": payload.seconds}


class SpinPayload(Payload):
    seconds: float = Field(ge=0, le=3600, examples=[1.5])


@task(SpinPayload, max_attempts=3, time_limit_seconds=3700)
def spin(payload: SpinPayload, job: JobContext) -> dict[str, Any]:
    """Keep a CPU busy for that long without ever looking at its job: what cancellation must
    interrupt once its grace has passed (a task that does not cooperate)."""
    deadline = time.monotonic() + payload.seconds
    while time.monotonic() < deadline:
        for _ in range(10_000):
            pass
    return {"spun": payload.seconds}


class TenantReportPayload(Payload):
    tenant: str = Field(min_length=1, max_length=200, examples=["acme"])
    seconds: float = Field(ge=0, le=3600, examples=[1.0])


@task(TenantReportPayload, concurrency=2, concurrency_key="tenant")
def tenant_report(payload: TenantReportPayload, job: JobContext) -> dict[str, Any]:
    """Sleep as a report would run: at most two at once per tenant, whatever the workers."""
    deadline = time.monotonic() + payload.seconds
    while (left := deadline - time.monotonic()) > 0:
        job.raise_if_cancelled()
        time.sleep(min(left, 0.25))
    return {"tenant": payload.tenant, "slept": payload.seconds}


class PartnerPayload(Payload):
    partner: str = Field(min_length=1, max_length=200, examples=["bank"])


@task(PartnerPayload, rate="5/second", rate_key="partner")
def call_partner(payload: PartnerPayload, job: JobContext) -> dict[str, Any]:
    """Call a partner's API: at most five calls a second per partner, across every worker."""
    return {"partner": payload.partner}


class SyncAccountPayload(Payload):
    account: str = Field(min_length=1, max_length=200, examples=["acme"])
    seconds: float = Field(default=1.0, ge=0, le=3600, examples=[1.5])


@task(SyncAccountPayload, max_attempts=3, time_limit_seconds=3700, unique_key="account")
def sync_account(payload: SyncAccountPayload, job: JobContext) -> dict[str, Any]:
    """Sleep as a sync of one account would take: one sync per account is in flight at a time."""
    deadline = time.monotonic() + payload.seconds
    while (left := deadline - time.monotonic()) > 0:
        job.raise_if_cancelled()
        time.sleep(min(left, 0.25))
    return {"account": payload.account, "synced": payload.seconds}
