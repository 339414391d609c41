"""``aidsafe judge``: grade generated records with an LLM judge, or compare two outputs pairwise."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from ..judge import Judge
from ..outputs import first_line_is
from ..pairs import PairRecord
from ._options import add_job_options, add_model_options, env_option, job_options_from_args, settings_from_args

HELP = "score records 1-5 on the paper's six metrics with an LLM judge (or compare two outputs with --against)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("judge", help=HELP, description=HELP)
    p.add_argument("records", help="a JSONL file written by aidsafe generate (records), or by aidsafe pairs (both sides of each pair are judged)")
    env_option(p, "-o", "--output", env="AIDSAFE_JUDGE_OUTPUT", help="judged JSONL (or pairwise verdicts with --against); required")
    env_option(p, "--against", env="AIDSAFE_JUDGE_AGAINST", help="another output of the same prompts: compare the two pairwise instead of scoring "
               "(an id naming different prompts in the two is refused)")
    env_option(p, "--rubric", default="judge_scores.jinja", help="scoring rubric template (shipped name or path)")
    env_option(p, "--pairwise-rubric", default="judge_pairwise.jinja", help="pairwise rubric template (shipped name or path)")
    env_option(p, "--policies", env="AIDSAFE_JUDGE_POLICIES", help="policy pack to judge against (default: the pack each record names)")
    env_option(p, "--limit", type=int, env="AIDSAFE_JUDGE_LIMIT", help="only the first N records")
    add_job_options(p, "record", env_prefix="JUDGE", retry_failed=False)
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.output:
        print("aidsafe judge: -o/--output is required", file=sys.stderr)
        return 2
    judge = Judge(settings_from_args(args), rubric=args.rubric, pairwise_rubric=args.pairwise_rubric, policies=args.policies)
    options = job_options_from_args(args)
    if args.against:
        summary = asyncio.run(judge.apairwise_file(args.records, args.against, args.output, options, limit=args.limit))
    elif first_line_is(args.records, PairRecord):  # an aidsafe pairs output: both sides of each pair
        summary = asyncio.run(judge.ajudge_pairs_file(args.records, args.output, options, limit=args.limit))
    else:
        summary = asyncio.run(judge.ajudge_file(args.records, args.output, options, limit=args.limit))
    print(f"wrote {args.output}: {json.dumps(summary)}", file=sys.stderr)
    return 0
