"""The SVG of a :class:`~._layout.Layout`: a standalone picture, drawn from the layout only.

SVG contract (stable: an HTML report highlights a record's path by toggling classes from JS):

- the root is ``<svg class="aidsafe-graph" data-graph="NAME" viewBox=... width=... height=...>``;
  its embedded ``<style>`` is scoped to ``svg.aidsafe-graph``, so the picture can be inlined in a page;
- every LangGraph node, ``__start__`` and ``__end__`` included, is one
  ``<g class="node" data-node="ID" data-kind="KIND">`` (KIND: ``start``, ``end``, ``role``,
  ``agent``, ``vote``); it holds a ``<title>``, one ``<rect>`` and its ``<text>`` lines;
- every LangGraph edge is one ``<g class="edge" data-from="A" data-to="B" data-kind="KIND">``
  (KIND: ``flow`` for a plain edge, ``continue`` for a conditional edge that stays in the loop,
  ``exit`` for one that leaves it), with ``data-label`` when LangGraph labels the edge; it holds
  a ``<title>``, one ``<path>``, one ``<polygon>`` (the arrowhead) and the edge's own ``<text>``
  label if any;
- the ``visited`` class (``class="node visited"``, ``class="edge visited"``) draws a node or
  edge bold and coloured: :func:`svg` sets it for ``highlight`` nodes and for the edges between two
  of them, and a script may toggle it with ``element.classList.toggle("visited")``;
- the loop is ``<g class="loop" data-loop="NODE_ID" data-label="...">`` (its box, its label and
  the labels its edges share).

All text is XML-escaped; the SVG has no script and no external reference (its only URL is the
SVG namespace).
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Iterable, Mapping
from typing import Any

from . import _layout
from ._layout import Command, Label, Layout
from ._style import CONTINUE, EDGE_COLOURS, EXIT, FONT_FAMILY, LOOP_FILL, LOOP_STROKE, NODE_COLOURS, TEXT_COLOURS, VISITED, VISITED_FILL

__all__ = ["render_svg", "svg"]

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _esc(text: object) -> str:
    """XML/HTML-escaped text (quotes included), without the control characters XML forbids."""
    return _html.escape(_XML_INVALID.sub("\ufffd", str(text)), quote=True)


def _num(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _svg_path(path: list[Command]) -> str:
    return " ".join(name + " " + " ".join(_num(v) for v in values) for name, values in path)


def _css() -> str:
    """The stylesheet; every rule is scoped to ``svg.aidsafe-graph``, so that a page holding the
    picture inline keeps its own styles."""
    rules: list[tuple[str, str]] = [
        (".background", "fill:#ffffff"),
        ("text", f"font-family:{FONT_FAMILY}"),
        *((f".{role}", f"fill:{colour}") for role, colour in TEXT_COLOURS.items()),
        ("text.title,.node-id", "font-weight:bold"),
        (".loop rect", f"fill:{LOOP_FILL};stroke:{LOOP_STROKE};stroke-width:1.2;stroke-dasharray:6 4"),
        (".node rect", "stroke-width:1.4"),
        *((f'.node[data-kind="{k}"] rect', f"fill:{fill};stroke:{stroke}") for k, (fill, stroke, _) in NODE_COLOURS.items()),
        *((f'.node[data-kind="{k}"] text', f"fill:{NODE_COLOURS[k][2]}") for k in ("start", "end")),
        (".node.visited rect", f"stroke:{VISITED};stroke-width:3;fill:{VISITED_FILL}"),
        ('.node.visited[data-kind="start"] rect,.node.visited[data-kind="end"] rect', f"fill:{VISITED}"),
        (".edge path", "fill:none;stroke-width:1.6"),
        *((f'.edge[data-kind="{k}"] path', f"stroke:{c}") for k, c in EDGE_COLOURS.items()),
        *((f'.edge[data-kind="{k}"] polygon,.edge[data-kind="{k}"] text', f"fill:{c}") for k, c in EDGE_COLOURS.items()),
        ('.edge[data-kind="continue"] path', "stroke-dasharray:6 4"),
        (".edge.visited path", f"stroke:{VISITED};stroke-width:3.2"),
        (".edge.visited polygon,.edge.visited text", f"fill:{VISITED}"),
        (".loop .edge-label", f"fill:{EXIT}"),
        (".loop .edge-label.continue", f"fill:{CONTINUE}"),
    ]
    return "\n".join(",".join(f"svg.aidsafe-graph {part}" for part in selectors.split(",")) + f"{{{body}}}" for selectors, body in rules)


def _svg_text(label: Label, extra_class: str = "") -> str:
    cls = f"{label.role} {extra_class}".strip()
    anchor = "" if label.anchor == "start" else f' text-anchor="{label.anchor}"'
    weight = ' font-weight="bold"' if label.bold else ""
    return f'<text class="{cls}" x="{_num(label.x)}" y="{_num(label.y)}" font-size="{_num(label.size)}"{anchor}{weight}>{_esc(label.text)}</text>'


def svg(
    compiled: Any, highlight: Iterable[str] | None = None, models: Mapping[str, str] | None = None, *, layout: Layout | None = None
) -> str:
    """A standalone SVG picture of a compiled graph; the nodes in ``highlight`` (and the edges
    between two of them) get the ``visited`` class; ``models`` names the models shown (see
    :func:`~._layout.model_label`). ``layout``: a layout of ``compiled`` already computed (e.g. to
    draw the PNG too), else :func:`~._layout.layout` computes it. The attributes are described in
    the module docstring."""
    lay = layout if layout is not None else _layout.layout(compiled, models)
    return render_svg(lay, highlight)


def render_svg(lay: Layout, highlight: Iterable[str] | None = None) -> str:
    """The SVG of a layout (nothing is laid out here); ``highlight`` as in :func:`svg`."""
    visited = set(highlight or ())
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="aidsafe-graph" data-graph="{_esc(lay.name)}" '
        f'viewBox="0 0 {_num(lay.width)} {_num(lay.height)}" width="{_num(lay.width)}" height="{_num(lay.height)}" role="img">',
        f"<title>{_esc(f'graph {lay.name}, policy pack {lay.policy_pack}')}</title>",
        f"<style>\n{_css()}\n</style>",
        f'<rect class="background" x="0" y="0" width="{_num(lay.width)}" height="{_num(lay.height)}"/>',
        '<g class="title">',
        *(_svg_text(label) for label in lay.title),
        "</g>",
    ]
    if lay.loop is not None:
        loop = lay.loop
        out.append(f'<g class="loop" data-loop="{_esc(loop.node)}" data-label="{_esc(loop.label)}">')
        out.append(f'<rect x="{_num(loop.x)}" y="{_num(loop.y)}" width="{_num(loop.w)}" height="{_num(loop.h)}" rx="12"/>')
        for label in loop.labels:
            extra = "continue" if label.role == "edge-label" and label.text.startswith("continue") else ""
            out.append(_svg_text(label, extra))
        out.append("</g>")
    out.append('<g class="edges">')
    for edge in lay.edges:
        cls = "edge visited" if edge.source in visited and edge.target in visited else "edge"
        label_attr = f' data-label="{_esc(edge.label)}"' if edge.label else ""
        tip = f"{edge.source} → {edge.target}" + (f": {edge.label}" if edge.label else "")
        arrow = " ".join(f"{_num(x)},{_num(y)}" for x, y in edge.arrow)
        out.append(f'<g class="{cls}" data-from="{_esc(edge.source)}" data-to="{_esc(edge.target)}" data-kind="{edge.kind}"{label_attr}>')
        out.append(f"<title>{_esc(tip)}</title>")
        out.append(f'<path d="{_svg_path(edge.path)}"/>')
        out.append(f'<polygon points="{arrow}"/>')
        out += [_svg_text(label) for label in edge.labels]
        out.append("</g>")
    out.append("</g>")
    out.append('<g class="nodes">')
    for node in lay.nodes:
        cls = "node visited" if node.id in visited else "node"
        out.append(f'<g class="{cls}" data-node="{_esc(node.id)}" data-kind="{node.kind}">')
        out.append(f"<title>{_esc(node.tooltip)}</title>")
        out.append(f'<rect x="{_num(node.x)}" y="{_num(node.y)}" width="{_num(node.w)}" height="{_num(node.h)}" rx="{_num(node.rx)}"/>')
        out += [_svg_text(label) for label in node.labels]
        out.append("</g>")
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)
