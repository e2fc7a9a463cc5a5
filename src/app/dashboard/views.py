"""How the dashboard shows things: ages, counts, ids, JSON and the throughput chart."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from markupsafe import Markup, escape
from starlette.templating import Jinja2Templates

from app.operate.stats import MinuteCount, StateCount
from app.settings import get_settings

HERE = Path(__file__).parent
TASK_PREFIX = "app.tasks."
# Stacked bottom to top in the chart, in this order.
FINISHED_STATES = ("succeeded", "dead", "cancelled")


def age_text(moment: datetime, now: datetime) -> str:
    """'12s ago', '5m ago', '2h 5m ago', '3d ago'; 'in 4s' for a moment still to come."""
    seconds = (now - moment).total_seconds()
    if abs(seconds) < 1:
        return "just now"
    text = span_text(int(abs(seconds)))
    return f"{text} ago" if seconds > 0 else f"in {text}"


def span_text(whole: int) -> str:
    """A span of whole seconds in its two largest units: '42s', '5m 3s', '2h 5m', '3d'."""
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes}m {rest}s" if minutes < 10 and rest else f"{minutes}m"
    if whole < 86400:
        hours, rest = divmod(whole, 3600)
        return f"{hours}h {rest // 60}m" if rest >= 60 else f"{hours}h"
    return f"{whole // 86400}d"


def duration_text(seconds: float) -> str:
    """How long an attempt took: '250ms', '1.5s', '2m 3s'."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.1f}s"
    return span_text(int(seconds))


def absolute_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(moment: datetime | None) -> Markup:
    """A relative age, with the absolute time on hover and for machines."""
    if moment is None:
        return Markup('<span class="muted">—</span>')
    # Every row has a few of these: plain escaping is several times faster than Markup.format.
    iso, absolute = escape(moment.isoformat()), escape(absolute_text(moment))
    return Markup(
        f'<time datetime="{iso}" title="{absolute}">{escape(age_text(moment, datetime.now(UTC)))}</time>'
    )


def seconds_ago(seconds: float | None) -> Markup:
    if seconds is None:
        return Markup('<span class="muted">none waiting</span>')
    return ago(datetime.now(UTC) - timedelta(seconds=seconds))


def short_id(job_id: object) -> str:
    return str(job_id)[:8]


def short_task(name: str) -> str:
    return name.removeprefix(TASK_PREFIX)


def number(value: int) -> str:
    return f"{value:,}"


def state_count(value: StateCount) -> Markup:
    if value.exact:
        return Markup("{}").format(number(value.count))
    return Markup('<span title="estimated by PostgreSQL\'s planner">≈{}</span>').format(number(value.count))


def pretty_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    state: str
    label: str


@dataclass
class Chart:
    """Jobs finished per minute over a window, as SVG rectangles ready to draw."""

    width: int
    height: int
    minutes: int
    peak: int
    bars: list[Bar] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    last_five_per_minute: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.totals.values())


def throughput_chart(
    rows: list[MinuteCount], now: datetime, minutes: int = 60, width: int = 600, height: int = 120
) -> Chart:
    end = now.replace(second=0, microsecond=0)
    start = end - timedelta(minutes=minutes - 1)
    per_minute: dict[datetime, dict[str, int]] = defaultdict(dict)
    for row in rows:
        minute = row.minute.astimezone(UTC)
        if start <= minute <= end and row.state in FINISHED_STATES:
            per_minute[minute][row.state] = row.jobs
    peak = max((sum(counts.values()) for counts in per_minute.values()), default=0)
    chart = Chart(width, height, minutes, peak)
    chart.totals = {state: sum(c.get(state, 0) for c in per_minute.values()) for state in FINISHED_STATES}
    recent = [sum(c.values()) for m, c in per_minute.items() if m > end - timedelta(minutes=5)]
    chart.last_five_per_minute = sum(recent) / 5
    if peak == 0:
        return chart
    slot = width / minutes
    for minute, counts in per_minute.items():
        x = (minute - start).total_seconds() / 60 * slot
        base = float(height)
        for state in FINISHED_STATES:
            count = counts.get(state, 0)
            if not count:
                continue
            bar_height = max(count / peak * height, 1.0)
            base -= bar_height
            label = f"{minute:%H:%M} UTC · {count:,} {state}"
            chart.bars.append(
                Bar(round(x + 1, 2), round(base, 2), round(slot - 2, 2), round(bar_height, 2), state, label)
            )
    return chart


def _asset_version() -> str:
    """Changes whenever a static file does, so browsers never keep a stale stylesheet."""
    stamps = [int(p.stat().st_mtime) for p in (HERE / "static").iterdir() if p.is_file()]
    return format(max(stamps, default=0), "x")


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(
        ago=ago,
        seconds_ago=seconds_ago,
        short_id=short_id,
        short_task=short_task,
        number=number,
        state_count=state_count,
        pretty_json=pretty_json,
        duration_text=duration_text,
        asset_version=_asset_version(),
    )
    templates.env.trim_blocks = True
    templates.env.lstrip_blocks = True
    # Outside development the templates never change: skip checking their files on each render.
    templates.env.auto_reload = get_settings().environment == "development"
    return templates
