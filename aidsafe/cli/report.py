"""``aidsafe report``: one self-contained HTML page to read a run and its judgements."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..viewer import write_report
from ._options import env_option

HELP = "write one self-contained HTML page (no network) with a run's summary, its records and each record's deliberation timeline"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help=HELP, description=HELP)
    p.add_argument("output", help="an aidsafe generate output (JSONL), judged or not")
    p.add_argument("judged", nargs="*", help="aidsafe judge outputs for it (their scores join the records by id)")
    env_option(p, "-o", "--html", help="the HTML file to write (default: OUTPUT with .html)", env="AIDSAFE_REPORT_HTML")
    p.add_argument("--graph", help="the graph file, for a graph that is not shipped (to draw its picture)")
    p.add_argument("--title", help="the page title")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    destination = Path(args.html) if args.html else Path(args.output).with_suffix(".html")
    path = write_report(args.output, args.judged, destination, graph=args.graph, title=args.title)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser (it needs no network)")
    return 0
