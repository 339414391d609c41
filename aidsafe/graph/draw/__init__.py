"""Pictures of a compiled graph: a standalone SVG, a PNG (matplotlib) and a self-contained HTML page.

Offline and pure Python: a small layered layout of its own (no graphviz, no web renderer). The
nodes and edges are those of the compiled LangGraph (``compiled.graph.get_graph()``); what each
node is (role, loop agent or vote; its template, reply kind and model), the loop and its exit
rule come from the graph's plan (``compiled.plan``, :mod:`aidsafe.graph.plan`), never from a
node's id; the policy pack from ``compiled.policies``.

One module per output, each drawing the same :class:`Layout`:

- ``_layout``: :func:`layout` computes every position once (:class:`Layout`, :class:`NodeBox`,
  :class:`EdgeLine`, :class:`LoopBox`, :class:`Label`); :func:`model_label` and
  :func:`compile_to_draw` say what a picture names and compile a graph only to draw it;
- ``_svg``: :func:`svg` and :func:`render_svg` (the SVG contract is in that module's docstring);
- ``_png``: :func:`png`, :func:`render_png` and :func:`png_figure`, matplotlib (the ``plots`` extra);
- ``_html``: :func:`html`, the page around the SVG;
- ``_style``: the fonts, sizes and colours the SVG and the PNG share.

``svg(compiled, layout=lay)`` and ``png(compiled, path, layout=lay)`` draw one layout computed once.
"""

from __future__ import annotations

from ._html import html
from ._layout import Command as Command
from ._layout import (
    EdgeLine,
    Label,
    Layout,
    LoopBox,
    NodeBox,
    compile_to_draw,
    exit_rule,
    layout,
    loop_label,
    model_label,
)
from ._layout import Point as Point
from ._layout import text_width as text_width
from ._png import png, png_figure, render_png
from ._style import ARROW_HALF_WIDTH as ARROW_HALF_WIDTH
from ._style import ARROW_LENGTH as ARROW_LENGTH
from ._style import CONTINUE as CONTINUE
from ._style import DETAIL_SIZE as DETAIL_SIZE
from ._style import EDGE_COLOURS as EDGE_COLOURS
from ._style import EDGE_LABEL_SIZE as EDGE_LABEL_SIZE
from ._style import EXIT as EXIT
from ._style import FLOW as FLOW
from ._style import FONT_FAMILY as FONT_FAMILY
from ._style import ID_SIZE as ID_SIZE
from ._style import LINE as LINE
from ._style import LOOP_FILL as LOOP_FILL
from ._style import LOOP_LABEL_SIZE as LOOP_LABEL_SIZE
from ._style import LOOP_STROKE as LOOP_STROKE
from ._style import MARGIN as MARGIN
from ._style import MIN_WIDTH as MIN_WIDTH
from ._style import NODE_COLOURS as NODE_COLOURS
from ._style import PLOTS_HINT as PLOTS_HINT
from ._style import SUBTITLE_SIZE as SUBTITLE_SIZE
from ._style import TEXT_COLOURS as TEXT_COLOURS
from ._style import TITLE_SIZE as TITLE_SIZE
from ._style import VISITED as VISITED
from ._style import VISITED_FILL as VISITED_FILL
from ._svg import render_svg, svg

__all__ = [
    "EdgeLine",
    "Label",
    "Layout",
    "LoopBox",
    "NodeBox",
    "compile_to_draw",
    "exit_rule",
    "html",
    "layout",
    "loop_label",
    "model_label",
    "png",
    "png_figure",
    "render_png",
    "render_svg",
    "svg",
]
