"""``aidsafe pairs``: DPO preference pairs from a generation output, by the ear-whisperer."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from ..errors import InputError
from ..pairs import PairMaker, pack_of
from ._options import add_job_options, add_model_options, env_option, job_options_from_args, role_models_from_args, settings_from_args

HELP = "make DPO pairs from a generation output: the ear-whisperer's violating answer is the rejected side, the record's refined CoT the chosen"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pairs", help=HELP, description=HELP)
    p.add_argument("records", help="a JSONL file written by aidsafe generate")
    env_option(p, "-o", "--output", env="AIDSAFE_PAIRS_OUTPUT", help="pair records, JSONL (required)")
    env_option(p, "--graph", default="ear_whisperer", env="AIDSAFE_PAIRS_GRAPH", help="the whisperer graph (shipped name or path)")
    env_option(p, "--policies", env="AIDSAFE_PAIRS_POLICIES", help="policy pack (default: the one the records were generated with)")
    env_option(p, "--limit", type=int, env="AIDSAFE_PAIRS_LIMIT", help="only the first N records")
    add_job_options(p, "prompt", env_prefix="PAIRS")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.output:
        raise InputError("-o/--output is required (or set AIDSAFE_PAIRS_OUTPUT)")
    maker = PairMaker(args.policies or pack_of(args.records), settings_from_args(args), graph=args.graph,
                      role_models=role_models_from_args(args))
    summary = asyncio.run(maker.apairs_file(args.records, args.output, job_options_from_args(args), limit=args.limit))
    print(f"wrote {args.output}: {json.dumps(summary.as_dict())}", file=sys.stderr)
    return 0 if summary["pairs"] or not summary["records"] else 1
