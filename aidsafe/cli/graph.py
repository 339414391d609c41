"""``aidsafe graph``: draw a compiled graph (Mermaid, SVG, PNG or HTML, from the real LangGraph object)
or print its normalized spec as JSON."""

from __future__ import annotations

import argparse
import json

from ..errors import AidsafeError, InputError
from ..graph import draw
from ._options import env_option

HELP = (
    "draw a graph: Mermaid text (default), a standalone SVG, a PNG (needs -o and matplotlib, the 'plots' extra) "
    "or a self-contained HTML page, all offline from the compiled LangGraph; or print its normalized spec as JSON"
)
FORMATS = ["mermaid", "json", "svg", "png", "html"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("graph", help=HELP, description=HELP)
    p.add_argument("graph", nargs="?", default="aidsafe", help="shipped graph name or graph file path")
    env_option(p, "--format", choices=FORMATS, default="mermaid", help="output format (png needs -o)", env="AIDSAFE_GRAPH_FORMAT")
    env_option(p, "--policies", default="aidsafe5", help="policy pack to compile with")
    env_option(p, "-o", "--output", help="write to this file instead of stdout", env="AIDSAFE_GRAPH_OUTPUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.format == "png" and not args.output:
        raise InputError("--format png writes a binary file: give -o/--output FILE.png (or set AIDSAFE_GRAPH_OUTPUT)")
    compiled = draw.compile_to_draw(args.graph, args.policies)
    if args.format == "png":
        try:
            draw.png(compiled, args.output)
        except OSError as exc:
            raise AidsafeError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        return 0
    if args.format == "mermaid":
        text = compiled.mermaid()
    elif args.format == "svg":
        text = draw.svg(compiled)
    elif args.format == "html":
        text = draw.html(compiled)
    else:
        text = json.dumps(compiled.spec.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2)
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
        except OSError as exc:
            raise AidsafeError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    else:
        print(text)
    return 0
