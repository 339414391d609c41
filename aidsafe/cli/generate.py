"""``aidsafe generate``: run the recipe on a file of prompts, one JSON record per prompt."""

from __future__ import annotations

import argparse
import gc
import sys

from ..pipeline import Pipeline
from ._options import (
    add_graph_options,
    add_job_options,
    add_model_options,
    env_option,
    job_options_from_args,
    role_models_from_args,
    settings_from_args,
)

HELP = "run a graph on a file of prompts (JSONL, CSV, text, or a saved HF dataset) and write JSONL records"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help=HELP, description=HELP)
    p.add_argument("input", help="prompts: .jsonl/.json (field 'prompt'), .csv, .txt (one per line) or a dataset folder")
    env_option(p, "-o", "--output", required=False, help="output JSONL file (required)")
    add_graph_options(p)
    env_option(p, "--prompt-field", default="prompt", help="field or column holding the prompt")
    env_option(p, "--id-field", default="id", help="field or column holding the id (default id: the record's number in the file, 1, 2, 3 ...)")
    env_option(p, "--limit", type=int, help="only the first N prompts")
    env_option(p, "--shard", type=_shard, metavar="I/N", help="run every N-th prompt starting at I (0-based), e.g. 0/4; join with 'aidsafe merge'")
    env_option(
        p, "--format", choices=["jsonl", "parquet", "hf"], default="jsonl", env="AIDSAFE_GENERATE_FORMAT",
        help="output format: JSONL, Parquet, or a Hugging Face save_to_disk folder (the JSONL is kept as OUTPUT.jsonl)",
    )
    env_option(p, "--lenient", action="store_true", help="skip bad input lines (each reported with file:line) and run the valid prompts; default: refuse the whole file before any model call")
    add_job_options(p, "prompt")
    add_model_options(p)
    p.set_defaults(func=run)


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    if not sep or shard[1] < 1 or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return shard


def tune_gc(backend: str | None = None) -> None:
    """Set the garbage collector for a long run of model calls: each call allocates thousands of
    short-lived objects, and with Python's default thresholds the collector took about a sixth of
    the client's CPU per call (bench/README.md, "Peers"). The openai backend's client modules are
    imported now (not at the first call), with the collector off; then everything imported so
    far is frozen (never scanned again), and young objects are collected after 10,000 allocations
    instead of 700. Cyclic garbage is still collected. Done only when ``aidsafe generate`` is the
    process's own command (not ``main([...])`` called from a program, which decides this for itself)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        if backend == "openai":
            import langchain_openai  # noqa: F401 - loaded here: see the docstring
    except ImportError:  # the model says what is missing at its first call
        pass
    finally:
        gc.freeze()
        gc.set_threshold(10_000, 20, 20)
        if enabled:
            gc.enable()


def run(args: argparse.Namespace) -> int:
    if not args.output:
        print("aidsafe generate: -o/--output is required", file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    options = job_options_from_args(args)
    pipe = Pipeline(args.graph, args.policies, settings, role_models=role_models_from_args(args))
    if getattr(args, "own_process", False):
        tune_gc(settings.backend)
    summary = pipe.generate(
        args.input, args.output, options, prompt_field=args.prompt_field, id_field=args.id_field, limit=args.limit,
        shard=args.shard, output_format=args.format, lenient=args.lenient,
    )
    print(f"wrote {args.output}: {summary}", file=sys.stderr)
    if summary.total and summary.ok == 0:
        return 1
    return 0
