"""The layout of a picture of a compiled graph: every box, edge, label and the loop's box, in
pixels, computed once by :func:`layout`; the SVG (:mod:`._svg`) and PNG (:mod:`._png`) renderers
draw a :class:`Layout` and lay nothing out themselves.

Nodes are placed top to bottom by their longest path from ``__start__``; the agents of the
deliberation loop sit in a labelled box ("deliberation loop: MODE, exit on RULE, budget N
rounds"); a sequential loop's way back to its first agent is a curved arc on the left side, a
parallel loop's vote sends a dashed arc back up to each agent; the edges that leave the loop
carry the exit label (the consensus rule and the budget), the edges that stay in it "continue".

The nodes and edges are those of the compiled LangGraph (``compiled.graph.get_graph()``); what a
node is (role, agent or vote, its binding and loop) and the loop's words come from the graph's
plan (``compiled.plan``, :mod:`aidsafe.graph.plan`), never from its id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import AidsafeError
from ..plan import PlanNode, word_exit
from ..spec import LoopSpec
from ._style import (
    ARROW_HALF_WIDTH,
    ARROW_LENGTH,
    DETAIL_SIZE,
    EDGE_LABEL_SIZE,
    ID_SIZE,
    LINE,
    LOOP_LABEL_SIZE,
    MARGIN,
    MIN_WIDTH,
    SUBTITLE_SIZE,
    TITLE_SIZE,
)

__all__ = [
    "Command",
    "EdgeLine",
    "Label",
    "Layout",
    "LoopBox",
    "NodeBox",
    "Point",
    "compile_to_draw",
    "exit_rule",
    "layout",
    "loop_label",
    "model_label",
    "text_width",
]


def _no_model(settings: Any) -> Any:
    raise AidsafeError(f"a graph compiled to be drawn calls no model ({settings.label()})")


def model_label(compiled: Any, name: str, models: Mapping[str, str] | None = None) -> str:
    """The model a picture names for a role or agent (``name`` as in ``compiled.bindings``): the one
    in ``models`` (e.g. a record's ``models``), else the binding's ``backend:model``; a graph compiled
    with the fake backend only to be drawn shows the role's own model, or "run's model" when the role
    names none (the run's ``--model`` decides)."""
    if models and name in models:
        return models[name]
    settings = compiled.bindings[name].settings
    if settings.backend == "fake":
        return "run's model" if settings.model in (None, "default") else str(settings.model)
    return str(settings.label())


def compile_to_draw(graph: str | Path, policies: str | Path = "aidsafe5") -> Any:
    """The graph compiled for a picture: no model is created or called, and passing a model factory
    skips the backends' checks, so a graph whose roles name real models (``model: gpt-4o``) draws too."""
    from ...models import ModelSettings
    from ..compiler import compile_graph

    return compile_graph(graph, policies, ModelSettings(backend="fake"), model_factory=_no_model)


Point = tuple[float, float]
Command = tuple[str, tuple[float, ...]]
"""A path command as in SVG: ``("M", (x, y))``, ``("L", (x, y))``, ``("Q", (cx, cy, x, y))``, ``("C", (c1x, c1y, c2x, c2y, x, y))``."""


# --- text measures --------------------------------------------------------------------------

_WIDTHS: dict[str, float] = {}
for _chars, _w in (
    ("ijl.,:;'!|", 0.29),
    (" ", 0.32),
    ("frt()[]{}-/\\", 0.38),
    ('"*^`', 0.45),
    ("_scz?", 0.53),
    ("abdeghknopquvxy0123456789$+<>=~#", 0.63),
    ("ABCDEFGHIJKLNOPQRSTUVXYZ&", 0.72),
    ("w%", 0.84),
    ("mMW@", 0.98),
):
    for _c in _chars:
        _WIDTHS[_c] = _w


def text_width(text: str, size: float, bold: bool = False) -> float:
    """Estimated width of ``text`` in DejaVu Sans (generous, so that boxes hold their text)."""
    em = sum(_WIDTHS.get(c, 1.0 if ord(c) >= 0x2E80 else 0.66) for c in text)
    return em * size * (1.1 if bold else 1.0)


def _shorten(text: str, limit: int = 46) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _wrap(text: str, size: float, width: float, max_lines: int = 3) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and text_width(f"{lines[-1]} {word}", size) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1] + " …"]
    return lines


def _split_or(label: str) -> list[str]:
    """An exit label on two lines: ``majority`` / ``or budget of 2 rounds``."""
    head, sep, tail = label.rpartition(" or ")
    return [head, f"or {tail}"] if sep and head else [label]


# --- the layout -----------------------------------------------------------------------------


@dataclass
class Label:
    """One line of text; ``y`` is the baseline, ``anchor`` is ``start``, ``middle`` or ``end``."""

    x: float
    y: float
    text: str
    size: float
    role: str
    bold: bool = False
    anchor: str = "start"

    def bbox(self) -> tuple[float, float, float, float]:
        width = text_width(self.text, self.size, self.bold)
        left = self.x - {"start": 0.0, "middle": width / 2, "end": width}[self.anchor]
        return left, self.y - 0.8 * self.size, left + width, self.y + 0.25 * self.size


@dataclass
class NodeBox:
    """A node's box (top-left corner, size, corner radius) and its text lines."""

    id: str
    kind: str
    x: float
    y: float
    w: float
    h: float
    rx: float
    lines: list[str]
    tooltip: str
    labels: list[Label] = field(default_factory=list)

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    @property
    def right(self) -> float:
        return self.x + self.w

    @property
    def bottom(self) -> float:
        return self.y + self.h


@dataclass
class EdgeLine:
    """An edge: its path (ending at the arrowhead's base), arrowhead triangle and own labels."""

    source: str
    target: str
    kind: str
    label: str | None
    path: list[Command]
    arrow: list[Point]
    labels: list[Label] = field(default_factory=list)


@dataclass
class LoopBox:
    """The deliberation loop's box, its label and the labels its edges share."""

    node: str
    label: str
    x: float
    y: float
    w: float
    h: float
    labels: list[Label] = field(default_factory=list)


@dataclass
class Layout:
    """Positions of everything, in pixels of a ``width`` x ``height`` canvas (y grows downwards)."""

    name: str
    width: float
    height: float
    title: list[Label]
    nodes: list[NodeBox]
    edges: list[EdgeLine]
    loop: LoopBox | None = None
    policy_pack: str = ""
    """``name@version`` of the policy pack the graph was compiled with."""

    def node(self, node_id: str) -> NodeBox:
        return next(n for n in self.nodes if n.id == node_id)


def exit_rule(loop: LoopSpec, stops: Sequence[str] = ()) -> str:
    """What ends a loop besides its budget: the consensus rule (``majority``, ``at_least 2 of 3``)
    or the stop reasons its agents may give (``violation``); empty when only the budget does.
    The words are :func:`~aidsafe.graph.plan.word_exit`'s (``ExitRule.rule``)."""
    return word_exit(loop, stops).rule


def loop_label(loop: LoopSpec, stops: Sequence[str] = ()) -> str:
    """``deliberation loop: MODE, exit on RULE, budget N rounds`` (the loop box's label; the words
    are :func:`~aidsafe.graph.plan.word_exit`'s, ``ExitRule.label``)."""
    return word_exit(loop, stops).label


def _node_box(compiled: Any, node_id: str, models: Mapping[str, str] | None = None) -> NodeBox:
    if node_id in ("__start__", "__end__"):
        kind = "start" if node_id == "__start__" else "end"
        return NodeBox(node_id, kind, 0, 0, 84, 30, 15, ["START" if kind == "start" else "END"], node_id)
    entry: PlanNode | None = compiled.plan.get(node_id)
    kind = entry.kind if entry is not None else "role"
    if entry is not None and entry.binding is not None:
        plan = entry.binding
        template, reply, role = plan.template, plan.reply, entry.role
        model = model_label(compiled, plan.name, models)
        lines = [node_id, _shorten(template), _shorten(f"{reply} · {model}")]
        tooltip = f"{node_id}: role {role}, template {template}, reply {reply}, model {model}"
    elif entry is not None and entry.exit is not None and (loop := compiled.plan.loop_of(entry)) is not None:
        lines = [node_id, f"vote: {entry.exit.rule}", f"minority: {loop.spec.minority}"]
        tooltip = f"{node_id}: {loop.spec.rule()}"
    else:
        lines, tooltip = [node_id], node_id
    width = max(text_width(lines[0], ID_SIZE, True), *(text_width(t, DETAIL_SIZE) for t in lines[1:])) + 28
    return NodeBox(node_id, kind, 0, 0, max(150.0, width), 32 + LINE * (len(lines) - 1), 8, lines, tooltip)

def _layers(nodes: list[str], forward: list[tuple[str, str]]) -> dict[str, int]:
    """Longest path from the sources, over the forward edges (the back edges are left out)."""
    incoming = {n: 0 for n in nodes}
    for _, t in forward:
        incoming[t] += 1
    layer = dict.fromkeys(nodes, 0)
    ready = [n for n in nodes if incoming[n] == 0]
    seen: set[str] = set()
    while ready:
        n = ready.pop(0)
        seen.add(n)
        for s, t in forward:
            if s == n:
                layer[t] = max(layer[t], layer[n] + 1)
                incoming[t] -= 1
                if incoming[t] == 0:
                    ready.append(t)
    for n in nodes:  # a cycle the loop rules did not break: place it after what precedes it
        if n not in seen:
            layer[n] = max([layer[s] + 1 for s, t in forward if t == n and s in seen] or [0])
    return layer


def _cubic(a: Point, c1: Point, c2: Point, b: Point) -> Command:
    return ("C", (*c1, *c2, *b))


def _end_with_arrow(path: list[Command]) -> tuple[list[Command], list[Point]]:
    """Shorten the last segment by the arrowhead's length and return the arrowhead triangle."""
    name, values = path[-1]
    end = (values[-2], values[-1])
    if name == "L" or name == "M":
        _, prev = path[-2]
        before = (prev[-2], prev[-1])
    else:
        before = (values[-4], values[-3])  # the last control point gives the end tangent
    dx, dy = end[0] - before[0], end[1] - before[1]
    length = (dx * dx + dy * dy) ** 0.5 or 1.0
    ux, uy = dx / length, dy / length
    base = (end[0] - ux * ARROW_LENGTH, end[1] - uy * ARROW_LENGTH)
    new_values = (*values[:-2], *base)
    if name == "C":  # move the second control point with the end, so the curve keeps its shape
        new_values = (*values[:2], values[2] - ux * ARROW_LENGTH, values[3] - uy * ARROW_LENGTH, *base)
    arrow = [end, (base[0] - uy * ARROW_HALF_WIDTH, base[1] + ux * ARROW_HALF_WIDTH), (base[0] + uy * ARROW_HALF_WIDTH, base[1] - ux * ARROW_HALF_WIDTH)]
    return [*path[:-1], (name, new_values)], arrow


def _path_points(path: list[Command]) -> list[Point]:
    """Points along a path (curves sampled), for bounding boxes."""
    points: list[Point] = []
    current = (0.0, 0.0)
    for name, v in path:
        if name in ("M", "L"):
            current = (v[0], v[1])
            points.append(current)
        elif name == "Q":
            for i in range(1, 9):
                t = i / 8
                points.append(
                    (
                        (1 - t) ** 2 * current[0] + 2 * (1 - t) * t * v[0] + t * t * v[2],
                        (1 - t) ** 2 * current[1] + 2 * (1 - t) * t * v[1] + t * t * v[3],
                    )
                )
            current = (v[2], v[3])
        elif name == "C":
            for i in range(1, 17):
                t = i / 16
                a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t * t, t**3
                points.append((a * current[0] + b * v[0] + c * v[2] + d * v[4], a * current[1] + b * v[1] + c * v[3] + d * v[5]))
            current = (v[4], v[5])
    return points


def _vertical(a: Point, b: Point) -> list[Command]:
    if abs(a[0] - b[0]) < 0.5:
        return [("M", a), ("L", b)]
    dy = (b[1] - a[1]) / 2
    return [("M", a), _cubic(a, (a[0], a[1] + dy), (b[0], b[1] - dy), b)]


_LANE = 12.0
_LANE_MARGIN = 22.0


def _rounded(points: list[Point], radius: float) -> list[Command]:
    """A polyline with rounded corners (quadratic curves); repeated and collinear points are dropped."""
    pts: list[Point] = []
    for p in points:
        if pts and abs(p[0] - pts[-1][0]) < 0.01 and abs(p[1] - pts[-1][1]) < 0.01:
            continue
        if len(pts) >= 2:
            (x0, y0), (x1, y1) = pts[-2], pts[-1]
            if abs((x1 - x0) * (p[1] - y1) - (y1 - y0) * (p[0] - x1)) < 0.01:
                pts[-1] = p
                continue
        pts.append(p)
    path: list[Command] = [("M", pts[0])]
    for prev, corner, nxt in zip(pts, pts[1:], pts[2:], strict=False):
        d_in = ((corner[0] - prev[0]) ** 2 + (corner[1] - prev[1]) ** 2) ** 0.5
        d_out = ((nxt[0] - corner[0]) ** 2 + (nxt[1] - corner[1]) ** 2) ** 0.5
        r = min(radius, d_in / 2, d_out / 2)
        before = (corner[0] - (corner[0] - prev[0]) / d_in * r, corner[1] - (corner[1] - prev[1]) / d_in * r)
        after = (corner[0] + (nxt[0] - corner[0]) / d_out * r, corner[1] + (nxt[1] - corner[1]) / d_out * r)
        path += [("L", before), ("Q", (*corner, *after))]
    path.append(("L", pts[-1]))
    return path


def _vote_lane(boxes: dict[str, NodeBox], members: list[str], source: str, target: str) -> list[Command]:
    """An edge between a parallel loop's agent and its vote, as nested lanes that never cross.

    Each agent has two lanes to the vote below it: down (its vote) on the outer side and back up
    (the next round) on the inner side. The agents left of the vote turn on lanes that get lower
    the farther out the agent is (the right side mirrors it), and their ports on the vote's top
    are ordered the same way, so every pair nests inside the pair of the agent outside it.
    """
    vote = boxes[members[-1]]
    agents = members[:-1]
    going_down = target == vote.id
    agent = boxes[source if going_down else target]
    left = [m for m in agents if boxes[m].cx < vote.cx - 0.5][::-1]  # inner to outer
    right = [m for m in agents if boxes[m].cx > vote.cx + 0.5]
    bottom = max(boxes[m].bottom for m in agents)
    if agent.id not in left and agent.id not in right:  # straight above the vote
        x = vote.cx + (-8 if going_down else 8)
        return [("M", (x, agent.bottom)), ("L", (x, vote.y))] if going_down else [("M", (x, vote.y)), ("L", (x, agent.bottom))]
    side, sign = (left, -1.0) if agent.id in left else (right, 1.0)
    rank = side.index(agent.id)
    lanes = max(len(left), len(right))
    start = 8 + _LANE if len(left) + len(right) < len(agents) else _LANE / 2
    spacing = min(_LANE, max(3.0, (vote.w / 2 - start - 6) / max(2 * lanes - 1, 1)))
    port_back = vote.cx + sign * (start + spacing * 2 * rank)
    port_down = vote.cx + sign * (start + spacing * (2 * rank + 1))
    level_back = bottom + _LANE_MARGIN + _LANE * 2 * rank
    level_down = bottom + _LANE_MARGIN + _LANE * (2 * rank + 1)
    if going_down:
        x = agent.cx + sign * 8
        return _rounded([(x, agent.bottom), (x, level_down), (port_down, level_down), (port_down, vote.y)], 6)
    x = agent.cx - sign * 8
    return _rounded([(port_back, vote.y), (port_back, level_back), (x, level_back), (x, agent.bottom)], 6)


def layout(compiled: Any, models: Mapping[str, str] | None = None) -> Layout:
    """Compute the picture of a compiled graph (a :class:`~aidsafe.graph.compiler.CompiledAidsafe`);
    ``models`` names the model of a role or agent (see :func:`model_label`)."""
    spec = compiled.spec
    drawable = compiled.graph.get_graph()
    node_ids = [str(n) for n in drawable.nodes]
    raw_edges = [(str(e.source), str(e.target), None if e.data is None else str(e.data), bool(e.conditional)) for e in drawable.edges]
    loop = compiled.plan.loop
    members = list(loop.members) if loop else []
    boxes = {n: _node_box(compiled, n, models) for n in node_ids}
    if loop is not None:  # the loop's agents share one width, so that the column (or row) is tidy
        agents = [m for m in members if boxes[m].kind == "agent"]
        width = max(boxes[m].w for m in agents) if agents else 0.0
        for m in agents:
            boxes[m].w = width

    # back edges: in the loop, an edge to an earlier (or the same) member; anything else runs forward
    back = {(s, t) for s, t, _, _ in raw_edges if s in members and t in members and members.index(t) <= members.index(s)}
    forward = [(s, t) for s, t, _, _ in raw_edges if (s, t) not in back]
    layer = _layers(node_ids, forward)
    depth = max(layer.values()) + 1
    rows: list[list[str]] = [[n for n in node_ids if layer[n] == i] for i in range(depth)]
    loop_rows = sorted({layer[m] for m in members})
    parallel = loop is not None and loop.spec.mode == "parallel"
    exits = [(s, t) for s, t, _, _ in raw_edges if s in members and t not in members]
    bus = len(exits) > 1
    header_pad = 40.0 + (30.0 if parallel else 14.0)  # the loop label, then (parallel) the fan-out line

    # rows top to bottom
    y = 0.0
    for i, row in enumerate(rows):
        if i > 0:
            gap = 44.0
            if loop_rows and i == loop_rows[0]:
                gap += header_pad
            elif loop_rows and i - 1 == loop_rows[-1]:
                gap = 16.0 + 58.0
            elif parallel and i in loop_rows:  # room for the nested lanes between the agents and the vote
                gap = max(56.0, 2 * _LANE_MARGIN + _LANE * (2 * ((len(members) - 1) // 2) - 1))
            y += gap
        height = max(boxes[n].h for n in row)
        total = sum(boxes[n].w for n in row) + 36.0 * (len(row) - 1)
        x = -total / 2
        for n in row:
            box = boxes[n]
            box.x, box.y = x, y + (height - box.h) / 2
            x += box.w + 36.0
        y += height

    edges: list[EdgeLine] = []
    loop_labels: list[Label] = []
    loop_edges: list[EdgeLine] = []
    exit_edges: list[EdgeLine] = []
    for s, t, data, conditional in raw_edges:
        a, b = boxes[s], boxes[t]
        kind = "flow"
        if conditional:
            kind = "exit" if s in members and t not in members else "continue"
        line = EdgeLine(s, t, kind, data, [], [])
        if s == t:  # a one-agent sequential loop goes round on itself
            xl = a.x
            line.path = [("M", (xl, a.cy - 9)), _cubic((xl, a.cy - 9), (xl - 52, a.cy - 34), (xl - 52, a.cy + 34), (xl, a.cy + 9))]
            line.labels.append(Label(xl - 50, a.cy + 4, data or "continue", EDGE_LABEL_SIZE, "edge-label", anchor="end"))
        elif parallel and s in members and t in members:  # an agent's vote, the vote's next round
            line.path = _vote_lane(boxes, members, s, t)
        elif (s, t) in back:  # the sequential ring closes on the left side
            xl = min(a.x, b.x)
            line.path = [("M", (a.x, a.cy)), _cubic((a.x, a.cy), (xl - 60, a.cy), (xl - 60, b.cy), (b.x, b.cy))]
            line.labels.append(Label(xl - 55, (a.cy + b.cy) / 2 + 4, data or "continue", EDGE_LABEL_SIZE, "edge-label", anchor="end"))
        elif t in members and s not in members and abs(a.cx - b.cx) >= 0.5:  # fan-out into the loop, split under its label
            split = b.y - 26
            line.path = _rounded([(a.cx, a.bottom), (a.cx, split), (b.cx, split), (b.cx, b.y)], 10)
        elif kind == "exit" and bus:  # every agent of a sequential loop may end it: they share a bus on the right
            line.path = [("M", (a.right, a.cy))]  # routed below, once the loop box is known
        else:
            line.path = _vertical((a.cx, a.bottom), (b.cx, b.y))
            if kind == "continue":
                line.labels.append(Label(a.cx + 8, (a.bottom + b.y) / 2 + 4, data or "continue", EDGE_LABEL_SIZE, "edge-label"))
        edges.append(line)
        if s in members and t in members:
            loop_edges.append(line)
        if kind == "exit":
            exit_edges.append(line)

    loop_box: LoopBox | None = None
    if loop is not None:
        # the box: the loop's nodes, its inner edges and their labels, plus a header for its label
        points: list[Point] = []
        for m in members:
            box = boxes[m]
            points += [(box.x, box.y), (box.right, box.bottom)]
        for line in loop_edges:
            points += _path_points(line.path)
            for label in line.labels:
                x0, y0, x1, y1 = label.bbox()
                points += [(x0, y0), (x1, y1)]
        if parallel:
            vote = boxes[members[-1]]
            shared = Label(vote.x - 12, vote.cy + 4, "continue: next round", EDGE_LABEL_SIZE, "edge-label", anchor="end")
            loop_labels.append(shared)
            x0, y0, x1, y1 = shared.bbox()
            points += [(x0, y0), (x1, y1)]
        left = min(p[0] for p in points) - 16
        right = max(p[0] for p in points) + 16
        top = min(boxes[m].y for m in members) - header_pad
        bottom = max(boxes[m].bottom for m in members) + 16
        text = loop.exit.label
        head, _, tail = text.partition(", ")
        header = [head + ",", tail]
        header_w = max(text_width(header[0], LOOP_LABEL_SIZE, True), text_width(header[1], LOOP_LABEL_SIZE))
        entering = [boxes[s].cx for s, t, _, _ in raw_edges if t in members and s not in members]
        trunk = min(entering) if entering else (left + right) / 2
        left = min(left, trunk - 14 - header_w - 12)
        right = max(right, left + header_w + 24)
        loop_box = LoopBox(loop.id, text, left, top, right - left, bottom - top)
        loop_box.labels += [
            Label(left + 12, top + 18, header[0], LOOP_LABEL_SIZE, "loop-label", bold=True),
            Label(left + 12, top + 33, header[1], LOOP_LABEL_SIZE, "loop-label"),
        ]
        loop_box.labels += loop_labels
        # the exit edges, and their label under the box, right of the line
        bus_x = right + 24
        exit_label = next((e.label for e in exit_edges if e.label), None)
        for line in exit_edges:
            if bus:
                a, b = boxes[line.source], boxes[line.target]
                line.path = _rounded([(a.right, a.cy), (bus_x, a.cy), (bus_x, b.cy), (b.right, b.cy)], 10)
        if exit_label:
            x = bus_x + 8 if bus else boxes[exit_edges[0].source].cx + 10
            parts = [Label(x, bottom + 20 + 15 * i, part, EDGE_LABEL_SIZE, "edge-label") for i, part in enumerate(_split_or(exit_label))]
            # the exits share one bus and one label; a single exit edge holds its own label
            (loop_box.labels if bus else exit_edges[0].labels).extend(parts)

    for line in edges:
        line.path, line.arrow = _end_with_arrow(line.path)

    # bounding box of the content, then the title above it
    points = []
    for box in boxes.values():
        points += [(box.x, box.y), (box.right, box.bottom)]
    for line in edges:
        points += _path_points(line.path) + line.arrow
    labels = [label for line in edges for label in line.labels] + (loop_box.labels if loop_box else [])
    for label in labels:
        x0, y0, x1, y1 = label.bbox()
        points += [(x0, y0), (x1, y1)]
    if loop_box:
        points += [(loop_box.x, loop_box.y), (loop_box.x + loop_box.w, loop_box.y + loop_box.h)]
    min_x, max_x = min(p[0] for p in points), max(p[0] for p in points)
    min_y, max_y = min(p[1] for p in points), max(p[1] for p in points)
    pack = compiled.policies
    title_text = f"graph {spec.name} · policy pack {pack.name}@{pack.version}"
    width = max(max_x - min_x, text_width(title_text, TITLE_SIZE, True), MIN_WIDTH - 2 * MARGIN) + 2 * MARGIN
    title = [Label(MARGIN, MARGIN + TITLE_SIZE * 0.8, title_text, TITLE_SIZE, "title", bold=True)]
    for line_text in _wrap(spec.description, SUBTITLE_SIZE, width - 2 * MARGIN) if spec.description else []:
        title.append(Label(MARGIN, title[-1].y + 18, line_text, SUBTITLE_SIZE, "subtitle"))
    content_top = title[-1].y + 28
    dx = (width - (max_x - min_x)) / 2 - min_x
    dy = content_top - min_y
    for box in boxes.values():
        box.x += dx
        box.y += dy
    for line in edges:
        line.path = [(name, tuple(v + (dx if i % 2 == 0 else dy) for i, v in enumerate(values))) for name, values in line.path]
        line.arrow = [(x + dx, y + dy) for x, y in line.arrow]
    for label in labels:
        label.x += dx
        label.y += dy
    if loop_box:
        loop_box.x += dx
        loop_box.y += dy
    for box in boxes.values():
        _node_labels(box)
    height = content_top + (max_y - min_y) + MARGIN
    nodes = [boxes[n] for n in node_ids]
    return Layout(spec.name, round(width), round(height), title, nodes, edges, loop_box, policy_pack=f"{pack.name}@{pack.version}")


def _node_labels(box: NodeBox) -> None:
    if box.kind in ("start", "end"):
        box.labels = [Label(box.cx, box.cy + 4.5, box.lines[0], DETAIL_SIZE, "node-id", bold=True, anchor="middle")]
        return
    box.labels = [Label(box.cx, box.y + 22, box.lines[0], ID_SIZE, "node-id", bold=True, anchor="middle")]
    box.labels += [Label(box.cx, box.y + 22 + LINE * i, t, DETAIL_SIZE, "node-detail", anchor="middle") for i, t in enumerate(box.lines[1:], 1)]

