"""The PNG of a :class:`~._layout.Layout`, drawn with matplotlib (the ``plots`` extra) from the
same layout as the SVG: :func:`png_figure` reads the boxes, paths and labels of the layout it is
given and lays nothing out itself."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from . import _layout
from ._layout import Label, Layout
from ._style import (
    CONTINUE,
    EDGE_COLOURS,
    EXIT,
    LOOP_FILL,
    LOOP_STROKE,
    NODE_COLOURS,
    PLOTS_HINT,
    TEXT_COLOURS,
    VISITED,
    VISITED_FILL,
)

__all__ = ["png", "png_figure", "render_png"]


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(f"a PNG picture needs matplotlib, which is not installed: {PLOTS_HINT}") from None
    return Figure, FigureCanvasAgg



def _dpi(lay: Layout) -> float:
    """100 dpi scaled so that the picture is about 1200 pixels wide (at most 2.5 times)."""
    return 100 * min(2.5, max(1.0, 1200 / lay.width))


def png(
    compiled: Any,
    path: str | os.PathLike[str],
    *,
    highlight: Iterable[str] | None = None,
    models: Mapping[str, str] | None = None,
    layout: Layout | None = None,
) -> Path:
    """Draw a compiled graph into a PNG file, about 1200 pixels wide: the picture of
    :func:`~._svg.svg`, from a layout of ``compiled`` (``layout`` when given, e.g. the one an SVG
    was drawn from; else :func:`~._layout.layout` computes it). See :func:`render_png`."""
    lay = layout if layout is not None else _layout.layout(compiled, models)
    return render_png(lay, path, highlight=highlight)


def render_png(lay: Layout, path: str | os.PathLike[str], *, highlight: Iterable[str] | None = None) -> Path:
    """Write :func:`png_figure` of a layout to a PNG file; the file is written to a temporary name
    and moved into place."""
    figure = png_figure(lay, highlight)
    target = Path(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        figure.savefig(temp, format="png", dpi=_dpi(lay), facecolor="white")
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def png_figure(lay: Layout, highlight: Iterable[str] | None = None) -> Any:
    """The matplotlib ``Figure`` of a layout (its axes in the layout's pixels, y downwards): the
    loop box, the edges, the node boxes and every label at the layout's own coordinates; the nodes
    in ``highlight`` (and the edges between two of them) drawn as visited."""
    Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib.patches import FancyBboxPatch, PathPatch, Polygon
    from matplotlib.path import Path as MplPath

    visited = set(highlight or ())
    pt = 72 / 100  # one canvas pixel, in points, at 100 dpi before scaling
    figure = Figure(figsize=(lay.width / 100, lay.height / 100), dpi=_dpi(lay), facecolor="white")
    FigureCanvasAgg(figure)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, lay.width)
    ax.set_ylim(lay.height, 0)
    ax.set_axis_off()

    def text(label: Label, colour: str) -> None:
        ax.text(
            label.x,
            label.y,
            label.text,
            fontsize=label.size * pt,
            color=colour,
            ha={"start": "left", "middle": "center", "end": "right"}[label.anchor],
            va="baseline",
            fontweight="bold" if label.bold else "normal",
            family="DejaVu Sans",
            parse_math=False,
            zorder=5,
        )

    for label in lay.title:
        text(label, TEXT_COLOURS[label.role])
    if lay.loop is not None:
        loop = lay.loop
        ax.add_patch(
            FancyBboxPatch(
                (loop.x, loop.y),
                loop.w,
                loop.h,
                boxstyle="round,pad=0,rounding_size=12",
                facecolor=LOOP_FILL,
                edgecolor=LOOP_STROKE,
                linewidth=1.2 * pt,
                linestyle=(0, (6, 4)),
                zorder=1,
            )
        )
        for label in loop.labels:
            colour = TEXT_COLOURS["loop-label"] if label.role == "loop-label" else (CONTINUE if label.text.startswith("continue") else EXIT)
            text(label, colour)
    codes = {"M": [MplPath.MOVETO], "L": [MplPath.LINETO], "Q": [MplPath.CURVE3] * 2, "C": [MplPath.CURVE4] * 3}
    for edge in lay.edges:
        on = edge.source in visited and edge.target in visited
        colour = VISITED if on else EDGE_COLOURS[edge.kind]
        vertices = [(values[i], values[i + 1]) for _, values in edge.path for i in range(0, len(values), 2)]
        shape = MplPath(vertices, [c for name, _ in edge.path for c in codes[name]])
        style: Any = (0, (6, 4)) if edge.kind == "continue" else "solid"
        ax.add_patch(PathPatch(shape, facecolor="none", edgecolor=colour, linewidth=(3.2 if on else 1.6) * pt, linestyle=style, zorder=2))
        ax.add_patch(Polygon(edge.arrow, closed=True, facecolor=colour, edgecolor=colour, linewidth=0.5 * pt, zorder=2))
        for label in edge.labels:
            text(label, colour)
    for node in lay.nodes:
        fill, stroke, ink = NODE_COLOURS.get(node.kind, NODE_COLOURS["role"])
        width = 1.4
        if node.id in visited:
            fill = VISITED if node.kind in ("start", "end") else VISITED_FILL
            stroke, width = VISITED, 3.0
        ax.add_patch(
            FancyBboxPatch(
                (node.x, node.y),
                node.w,
                node.h,
                boxstyle=f"round,pad=0,rounding_size={node.rx}",
                facecolor=fill,
                edgecolor=stroke,
                linewidth=width * pt,
                zorder=3,
            )
        )
        for label in node.labels:
            text(label, ink if label.role == "node-id" or node.kind in ("start", "end") else TEXT_COLOURS["node-detail"])
    return figure
