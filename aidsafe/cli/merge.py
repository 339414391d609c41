"""``aidsafe merge``: concatenate shard outputs into one file, checking that every id is there once."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from ..errors import InputError
from ..inputs import read_prompts
from ..outputs import merge_outputs
from ._options import env_option

HELP = (
    "merge shard outputs (JSONL) into one file, refusing duplicate ids, shards written with different configurations "
    "(the digest each record carries in written_by.config) and, with --input, missing or unexpected ids "
    "and ids whose record names another prompt than the input"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help=HELP, description=HELP)
    p.add_argument("shards", nargs="+", metavar="SHARD", help="JSONL files written by aidsafe generate")
    env_option(p, "-o", "--output", help="merged JSONL file (required)", env="AIDSAFE_MERGE_OUTPUT")
    env_option(p, "--input", help="the prompts file of the run: every id in it must be in exactly one shard, with its prompt",
               env="AIDSAFE_MERGE_INPUT")
    env_option(p, "--prompt-field", default="prompt", help="field holding the prompt in --input", env="AIDSAFE_MERGE_PROMPT_FIELD")
    env_option(p, "--id-field", default="id", help="field holding the id in --input", env="AIDSAFE_MERGE_ID_FIELD")
    p.set_defaults(func=run)


def input_ids(path: str, *, prompt_field: str, id_field: str) -> Iterator[tuple[str, str]]:
    """Stream the ``(id, prompt)`` of each prompt of a prompts file (validated like ``aidsafe
    generate`` reads it, with the same ids)."""
    for item in read_prompts(path, prompt_field=prompt_field, id_field=id_field):
        yield item.id, item.prompt


def run(args: argparse.Namespace) -> int:
    if not args.output:
        raise InputError("-o/--output is required (or set AIDSAFE_MERGE_OUTPUT)")
    expected = None
    if args.input:
        expected = input_ids(args.input, prompt_field=args.prompt_field, id_field=args.id_field)
    summary = merge_outputs(args.shards, args.output, expected_ids=expected)
    print(
        f"merged {summary['shards']} shard(s) into {args.output}: {summary['records']} records "
        f"({summary['ok']} ok, {summary['failed']} failed)",
        file=sys.stderr,
    )
    return 0
