"""``aidsafe validate``: check a graph, its templates, a policy pack and an input file, without calling a model."""

from __future__ import annotations

import argparse

from ..graph.compiler import compile_graph
from ..inputs import count_prompts
from ..models import ModelSettings
from ._options import add_graph_options, env_option

HELP = "check graph, templates, policies (and an input file) without any model call"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help=HELP, description=HELP)
    add_graph_options(p)
    env_option(p, "--input", help="also check this prompts file")
    env_option(p, "--prompt-field", default="prompt", help="field or column holding the prompt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    compiled = compile_graph(args.graph, args.policies, ModelSettings(backend="fake"))  # no model is needed
    spec = compiled.spec
    print(
        f"graph {spec.name!r} ({compiled.path}): {len(spec.flow)} nodes, roles {', '.join(spec.roles)}; "
        f"recursion limit {compiled.recursion_limit}"
    )
    print(f"policies {compiled.policies.name!r} {compiled.policies.version}: {', '.join(compiled.policies.ids)}")
    if args.input:
        print(f"input {args.input}: {count_prompts(args.input, prompt_field=args.prompt_field)} prompts")
    print("ok")
    return 0
