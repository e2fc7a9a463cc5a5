"""A workflow drawn as its graph, server-side: one column per layer (a step's depth), one box
per step coloured by its state and linking to its job, an arrow for each `after`. Plain SVG
shapes and classes, so the dashboard's Content-Security-Policy (no inline script or style) holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from app.operate.workflows import WorkflowView

BOX_WIDTH = 168
BOX_HEIGHT = 46
COLUMN_GAP = 64
ROW_GAP = 16
MARGIN = 12
# Longer names are cut with an ellipsis: the box's title shows the whole name.
NAME_CHARS = 20


@dataclass(frozen=True, slots=True)
class Box:
    step: str
    label: str
    job_id: UUID
    state: str
    task: str
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Arrow:
    path: str
    title: str


@dataclass
class Graph:
    width: int
    height: int
    box_width: int = BOX_WIDTH
    box_height: int = BOX_HEIGHT
    boxes: list[Box] = field(default_factory=list)
    arrows: list[Arrow] = field(default_factory=list)


def _label(step: str) -> str:
    return step if len(step) <= NAME_CHARS else step[: NAME_CHARS - 1] + "…"


def workflow_graph(workflow: WorkflowView) -> Graph:
    """Where each step's box and each arrow go; the steps come ordered by depth, then name."""
    steps = workflow.steps or {}
    rows: dict[int, int] = {}
    boxes: dict[str, Box] = {}
    for name, step in steps.items():
        row = rows.get(step.depth, 0)
        rows[step.depth] = row + 1
        x = MARGIN + step.depth * (BOX_WIDTH + COLUMN_GAP)
        y = MARGIN + row * (BOX_HEIGHT + ROW_GAP)
        boxes[name] = Box(name, _label(name), step.job_id, step.state, step.task, x, y)
    columns = max(rows, default=0) + 1
    tallest = max(rows.values(), default=1)
    graph = Graph(
        width=2 * MARGIN + columns * BOX_WIDTH + (columns - 1) * COLUMN_GAP,
        height=2 * MARGIN + tallest * BOX_HEIGHT + (tallest - 1) * ROW_GAP,
        boxes=list(boxes.values()),
    )
    for name, step in steps.items():
        to = boxes[name]
        for upstream in step.after:
            start = boxes.get(upstream)
            if start is None:
                continue
            x1, y1 = start.x + BOX_WIDTH, start.y + BOX_HEIGHT // 2
            x2, y2 = to.x - 6, to.y + BOX_HEIGHT // 2  # the arrowhead's length short of the box
            bend = (x2 - x1) // 2
            path = f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
            graph.arrows.append(Arrow(path, f"{name} comes after {upstream}"))
    return graph
