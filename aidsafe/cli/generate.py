"""``aidsafe generate``: run the recipe on a file of prompts, one JSON record per prompt."""

from __future__ import annotations

import argparse
import sys

from ..pipeline import Pipeline
from ._options import add_graph_options, add_model_options, env_option, role_models_from_args, settings_from_args

HELP = "run a graph on a file of prompts (JSONL, CSV, text, or a saved HF dataset) and write JSONL records"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("generate", help=HELP, description=HELP)
    p.add_argument("input", help="prompts: .jsonl/.json (field 'prompt'), .csv, .txt (one per line) or a dataset folder")
    env_option(p, "-o", "--output", required=False, help="output JSONL file (required)")
    add_graph_options(p)
    env_option(p, "--prompt-field", default="prompt", help="field or column holding the prompt")
    env_option(p, "--id-field", default="id", help="field or column holding the id (default id: line/row number)")
    env_option(p, "--limit", type=int, help="only the first N prompts")
    env_option(p, "--concurrency", type=int, default=1, help="prompts in flight at once (the local model runs one call at a time)")
    env_option(p, "--overwrite", action="store_true", help="replace an existing output file")
    env_option(p, "--no-progress", action="store_true", help="no progress bar")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.output:
        print("aidsafe generate: -o/--output is required", file=sys.stderr)
        return 2
    pipe = Pipeline(args.graph, args.policies, settings_from_args(args), role_models=role_models_from_args(args))
    summary = pipe.generate(
        args.input,
        args.output,
        prompt_field=args.prompt_field,
        id_field=args.id_field,
        limit=args.limit,
        concurrency=args.concurrency,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"wrote {args.output}: {summary}", file=sys.stderr)
    if summary.total and summary.ok == 0:
        return 1
    return 0
