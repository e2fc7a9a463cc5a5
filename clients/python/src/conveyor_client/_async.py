"""The asyncio client: `AsyncClient` and the `AsyncJob` it returns."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from conveyor_client import _common as common
from conveyor_client._errors import ConveyorError
from conveyor_client._models import Event, JobFields, parse_view
from conveyor_client._sse import Decoder, Resumption
from conveyor_client._workflows import Step, WorkflowFields, parse_workflow


@dataclass(kw_only=True, eq=False)
class AsyncJob(JobFields):
    """A job, as the API last described it; `await refresh()` and `await wait()` ask again."""

    client: AsyncClient = field(repr=False)

    async def refresh(self) -> AsyncJob:
        """Reads the job again (`GET /api/v1/jobs/{id}`); returns itself, updated."""
        self._update(await self.client._view(self.id))
        return self

    # `timeout=` as in the blocking client, and it bounds the server-side wait too.
    async def wait(self, timeout: float | None = None) -> AsyncJob:  # noqa: ASYNC109
        """Waits until the job is succeeded, dead or cancelled and returns it, updated; raises
        `TimeoutError` if it is not after `timeout` seconds (None: no limit)."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        pause = 0.0
        while not self.finished:
            left = common.remaining(deadline, time.monotonic())
            if left <= 0:
                raise TimeoutError(f"job {self.id} is still {self.state} after {timeout} s")
            asked = common.wait_seconds(left)
            started = time.monotonic()
            self._update(await self.client._view(self.id, wait_seconds=asked))
            if self.finished:
                break
            if common.answered_early(asked, time.monotonic() - started):
                pause = common.next_poll(pause)
                await asyncio.sleep(min(pause, max(common.remaining(deadline, time.monotonic()), 0.0)))
        return self


@dataclass(kw_only=True, eq=False)
class AsyncWorkflow(WorkflowFields):
    """A workflow, as the API last described it; `await refresh()` and `await wait()` ask again."""

    client: AsyncClient = field(repr=False)

    async def refresh(self) -> AsyncWorkflow:
        """Reads the workflow again (`GET /api/v1/workflows/{id}`); returns itself, updated."""
        self._update(await self.client._send(common.workflow_call(self.id)))
        return self

    async def wait(self, timeout: float | None = None) -> AsyncWorkflow:  # noqa: ASYNC109
        """Waits until the workflow is succeeded or failed and returns it, updated (polling: 0.1 s
        at first, growing to 1 s); raises `TimeoutError` if it is not after `timeout` seconds."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        pause = 0.0
        while not (await self.refresh()).finished:
            left = common.remaining(deadline, time.monotonic())
            if left <= 0:
                raise TimeoutError(f"workflow {self.id} is still {self.state} after {timeout} s")
            pause = common.next_poll(pause)
            await asyncio.sleep(min(pause, left))
        return self


class AsyncClient:
    """Conveyor's HTTP API from asyncio code. `key` is an API key (`cvk_…`); `timeout` bounds
    each request, in seconds (a wait's request gets its wait on top)."""

    def __init__(
        self,
        base_url: str,
        *,
        key: str | None = None,
        timeout: float = common.DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=common.headers(key, headers),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- jobs ------------------------------------------------------------------------------

    async def enqueue(
        self,
        task: str,
        payload: common.Payload | None = None,
        *,
        delay_seconds: int | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        unique_key: str | None = None,
    ) -> AsyncJob:
        """Enqueues a job of `task` (`POST /api/v1/jobs`); `.duplicate` is true when the
        idempotency or unique key named a job that was there already, `.replayed` when the
        idempotency key did (the API answered as it answered that key first)."""
        options = common.JobOptions(delay_seconds, priority, idempotency_key, unique_key)
        view, replayed = await self._create(common.enqueue_call(task, payload, options))
        return self._job(view, replayed=replayed)

    async def enqueue_many(
        self,
        task: str,
        payloads: Sequence[common.Payload],
        *,
        delay_seconds: int | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        unique_key: str | None = None,
    ) -> list[AsyncJob]:
        """Enqueues a job of `task` per payload in one request, all or none (`POST
        /api/v1/jobs/batch`, at most MAX_BATCH_JOBS); the jobs in the payloads' order. The
        idempotency key covers the whole batch: sent again, every job answered is `.replayed`
        (the first batch's ids, nothing new stored)."""
        options = common.JobOptions(delay_seconds, priority, idempotency_key, unique_key)
        answer, replayed = await self._create(common.enqueue_many_call(task, payloads, options))
        return [self._job(job, replayed=replayed) for job in answer["jobs"]]

    async def get(self, job_id: str) -> AsyncJob:
        return self._job(await self._view(job_id))

    async def cancel(self, job_id: str) -> AsyncJob:
        """Cancels the job: at once if it has not started, else its worker is asked to stop it
        (the job answered is then still running; `wait` for its end)."""
        return self._job(await self._send(common.action_call(job_id, "cancel")))

    async def replay(self, job_id: str) -> AsyncJob:
        """Runs a dead job again, from its first attempt; `Conflict` if it is not dead."""
        return self._job(await self._send(common.action_call(job_id, "replay")))

    # -- workflows -------------------------------------------------------------------------

    async def enqueue_workflow(
        self,
        name: str,
        steps: Mapping[str, Step | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> AsyncWorkflow:
        """Enqueues a workflow, every step or none (`POST /api/v1/workflows`): each step a `Step`
        (task, payload, `after`, priority); the answer knows each step's job id (`.job_ids`), and
        `.replayed` is true when the idempotency key answered the first workflow it made."""
        call = common.enqueue_workflow_call(name, steps, idempotency_key)
        view, replayed = await self._create(call)
        return self._workflow(view, replayed=replayed)

    async def get_workflow(self, workflow_id: str) -> AsyncWorkflow:
        """The workflow with each step's state (`GET /api/v1/workflows/{id}`)."""
        return self._workflow(await self._send(common.workflow_call(workflow_id)))

    async def cancel_workflow(self, workflow_id: str) -> AsyncWorkflow:
        """Cancels the workflow's steps that have not started, and asks its running steps to stop
        (`POST /api/v1/workflows/{id}/cancel`); `Conflict` when every step has finished."""
        return self._workflow(await self._send(common.cancel_workflow_call(workflow_id)))

    # -- events ----------------------------------------------------------------------------

    async def events(
        self,
        *,
        task: str | None = None,
        job: str | None = None,
        workflow: str | None = None,
        after: str | None = None,
        idle_timeout: float = common.EVENTS_IDLE_TIMEOUT,
        max_retries: int | None = common.EVENTS_MAX_RETRIES,
    ) -> AsyncIterator[Event[AsyncJob]]:
        """The job changes the key may see, as they happen (`GET /api/v1/events`), from after the
        event `after` (an `Event.id`; `OLDEST`, "0-0": from the oldest event the API keeps) or
        from now. A dropped connection is made again with backoff, resuming after the last
        event; `max_retries` failed connections in a row end the iteration with the last error
        (a `NetworkError`, or the API's refusal; None: never)."""
        call = common.events_call(
            {"task": task, "job": job, "workflow": workflow}, self.timeout, idle_timeout
        )
        resumption = Resumption(after, max_retries)
        while True:
            error: ConveyorError | None = None
            retry_after: float | None = None
            try:
                headers = resumption.headers()
                async with self._http.stream(
                    call.method, call.path, headers=headers, **call.options()
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        raise common.refusal(response)
                    decoder = Decoder()
                    async for line in response.aiter_lines():
                        if (sent := resumption.take(decoder, line)) is not None:
                            yield self._event(sent.id, sent.event, sent.data)
            except (httpx.RequestError, ConveyorError) as failed:
                error, retry_after = common.stream_failure(failed)
            await asyncio.sleep(resumption.delay(error, retry_after))

    # -- plumbing --------------------------------------------------------------------------

    async def _send(self, call: common.Call) -> Any:
        return common.answer(await self._request(call))

    async def _create(self, call: common.Call) -> tuple[Any, bool]:
        """An enqueue's answer, and whether it replays an earlier one (the same Idempotency-Key)."""
        response = await self._request(call)
        return common.answer(response), common.replayed(response)

    async def _request(self, call: common.Call) -> httpx.Response:
        try:
            return await self._http.request(call.method, call.path, **call.options())
        except httpx.RequestError as error:
            raise common.network_error(error) from error

    async def _view(self, job_id: str, wait_seconds: int | None = None) -> dict[str, Any]:
        return dict(await self._send(common.view_call(job_id, wait_seconds, self.timeout)))

    def _job(self, view: Mapping[str, Any], *, replayed: bool = False) -> AsyncJob:
        job = AsyncJob(client=self, replayed=replayed, **parse_view(view))
        job.raw = dict(view)
        return job

    def _workflow(self, view: Mapping[str, Any], *, replayed: bool = False) -> AsyncWorkflow:
        workflow = AsyncWorkflow(client=self, replayed=replayed, **parse_workflow(view))
        workflow.raw = dict(view)
        return workflow

    def _event(self, event_id: str | None, kind: str, data: str) -> Event[AsyncJob]:
        view = json.loads(data)
        return Event(id=event_id or "", type=kind, job=self._job(view), data=view)
