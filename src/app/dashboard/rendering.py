"""Rendering pages and fragments, and the one-shot notice an action leaves for the next page."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from fastapi import Request, Response

from app.access.keys import Scope
from app.dashboard.security import harden
from app.dashboard.views import make_templates
from app.ledger.schema import JobState

templates = make_templates()

NOTICE_COOKIE = "conveyor_notice"
COUNT = re.compile(r"[0-9]{1,12}")
DASHBOARD = "/dashboard"


# What each kind of notice says; {count}, {jobs} and {state} are filled in. The kinds here
# are the only ones a notice cookie may carry.
NOTICE_TEXTS = {
    "replayed": "Replayed {count:,} {jobs}: queued again, with their history kept.",
    "discarded": "Discarded {count:,} dead {jobs} and their history.",
    "cancelled": "Cancelled the job: it will not run.",
    "cancelling": "Asked the worker to stop the job: it ends cancelled, or succeeded if it finishes first.",
    "paused": "Paused the schedule: it makes no jobs until it is resumed.",
    "resumed": "Resumed the schedule: it fires from its next tick; the ticks it missed do not fire.",
    "queue_paused": "Paused the queue: it starts nothing new; running jobs finish, accepting goes on.",
    "queue_resumed": "Resumed the queue: the jobs it held start again.",
    "refused": "Nothing done: the job is {state} now.",
    "no_schedule": "Nothing done: there is no such schedule now.",
    "no_queue": "Nothing done: there is no such queue.",
    "workflow_cancelled": "Cancelled the workflow: its steps that had not started will not run; "
    "running ones are asked to stop.",
    "workflow_ended": "Nothing done: every step of the workflow has finished.",
    "delivery_replayed": "The delivery will be sent again, with the same event id.",
    "no_delivery": "Nothing done: that delivery is gone, or is pending already.",
}
REFUSALS = frozenset({"refused", "no_schedule", "no_queue", "no_delivery", "workflow_ended"})


@dataclass(frozen=True, slots=True)
class Notice:
    """What an action did, carried to the page it redirects to. Only codes travel, never text."""

    kind: str
    count: int = 0
    state: str = ""

    @property
    def ok(self) -> bool:
        return self.kind not in REFUSALS

    def text(self) -> str:
        jobs = "job" if self.count == 1 else "jobs"
        return NOTICE_TEXTS[self.kind].format(count=self.count, jobs=jobs, state=self.state or "gone")

    def encode(self) -> str:
        return quote(f"{self.kind}|{self.count}|{self.state}")

    @classmethod
    def decode(cls, raw: str) -> Notice | None:
        """The notice a cookie carries; None for anything this dashboard did not write."""
        kind, _, rest = unquote(raw).partition("|")
        count, _, state = rest.partition("|")
        valid_state = state == "" or state in {s.value for s in JobState}
        # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
        if kind not in NOTICE_TEXTS or COUNT.fullmatch(count) is None:
            return None
        return cls(kind, int(count), state) if valid_state else None


def render(
    request: Request, template: str, context: dict[str, Any], *, page: bool = True, status_code: int = 200
) -> Response:
    """A full page (which also shows and clears a pending notice) or a fragment for htmx."""
    notice = Notice.decode(request.cookies.get(NOTICE_COOKIE, "")) if page else None
    client = getattr(request.state, "client", None)
    who = {"client": client, "can_operate": client is not None and client.may(Scope.OPERATE)}
    response = templates.TemplateResponse(
        request, template, {**context, **who, "notice": notice}, status_code=status_code
    )
    if page and NOTICE_COOKIE in request.cookies:
        response.delete_cookie(NOTICE_COOKIE, path=DASHBOARD)
    return harden(response)


def leave_notice(response: Response, notice: Notice) -> None:
    response.set_cookie(
        NOTICE_COOKIE, notice.encode(), max_age=60, path=DASHBOARD, httponly=True, samesite="strict"
    )


def query(**params: str | None) -> str:
    """`?a=1&b=2` from the parameters that have a value; '' when none has."""
    kept = {key: value for key, value in params.items() if value}
    return "?" + urlencode(kept) if kept else ""


def safe_next(target: str | None, default: str) -> str:
    """A redirect target inside the dashboard; anything else (another host, a scheme) is ignored."""
    if not target:
        return default
    parts = urlsplit(target)
    inside = parts.path == DASHBOARD or parts.path.startswith(DASHBOARD + "/")
    if parts.scheme or parts.netloc or not inside or "\\" in target:
        return default
    return target
