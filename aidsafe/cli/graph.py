"""``aidsafe graph``: print a compiled graph (Mermaid, from the real LangGraph object)."""

from __future__ import annotations

import argparse
import json

from ..graph.compiler import compile_graph
from ..models import ModelSettings
from ._options import env_option

HELP = "print a graph as Mermaid (from the compiled LangGraph) or its normalized spec as JSON"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("graph", help=HELP, description=HELP)
    p.add_argument("graph", nargs="?", default="aidsafe", help="shipped graph name or graph file path")
    env_option(p, "--format", choices=["mermaid", "json"], default="mermaid", help="output format", env="AIDSAFE_GRAPH_FORMAT")
    env_option(p, "--policies", default="aidsafe5", help="policy pack to compile with")
    env_option(p, "-o", "--output", help="write to this file instead of stdout", env="AIDSAFE_GRAPH_OUTPUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    compiled = compile_graph(args.graph, args.policies, ModelSettings(backend="fake"))  # no model is needed
    if args.format == "mermaid":
        text = compiled.mermaid()
    else:
        text = json.dumps(compiled.spec.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    else:
        print(text)
    return 0
