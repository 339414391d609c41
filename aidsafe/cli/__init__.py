"""The ``aidsafe`` command line: a thin layer over the library API, one module per sub-command."""

from __future__ import annotations

import argparse
import faulthandler
import sys

from ..errors import AidsafeError, JobInterrupted
from . import calibrate, compare, eval, export, filter, generate, graph, importer, judge, merge, pairs, render, report, train, validate

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aidsafe",
        description="Policy-embedded chain-of-thought safety data by multi-agent deliberation (AIDSAFE).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (generate, graph, render, validate, pairs, export, train, eval, importer, merge, judge, compare, report, filter, calibrate):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a bad option or environment variable exits with 2
    args.own_process = argv is None  # the command line of this process: a long run may tune it (see generate.tune_gc)
    if args.own_process and not faulthandler.is_enabled():
        faulthandler.enable()  # a native crash (llama.cpp) prints where it happened, not only "Segmentation fault"
    try:
        return int(args.func(args))
    except JobInterrupted as exc:
        print(f"aidsafe {args.command}: {exc}", file=sys.stderr)
        return 130
    except AidsafeError as exc:
        print(f"aidsafe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"aidsafe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
