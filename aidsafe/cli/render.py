"""``aidsafe render``: print the exact messages a role would send for a prompt, without calling a model."""

from __future__ import annotations

import argparse
import json

from ..models import ModelSettings
from ..pipeline import Pipeline
from ._options import add_graph_options, env_option

HELP = "print the messages a role would send for a prompt (no model call), to debug templates and policies"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help=HELP, description=HELP)
    p.add_argument("prompt", help="the user prompt (or @FILE to read it from a file)")
    env_option(p, "--role", default="initializer", help="role or agent name (e.g. intent, initializer, agent_1, refiner)")
    add_graph_options(p)
    env_option(p, "--json", action="store_true", help="print the messages as JSON")
    env_option(p, "--schema", action="store_true", help="also print the JSON Schema sent with the request")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prompt = args.prompt
    if prompt.startswith("@"):
        with open(prompt[1:], encoding="utf-8") as fh:
            prompt = fh.read()
    pipe = Pipeline(args.graph, args.policies, ModelSettings(backend="fake"))
    messages = pipe.messages(args.role, prompt)
    if args.json:
        print(json.dumps(messages, indent=2, ensure_ascii=False))
    else:
        for message in messages:
            print(f"===== {message['role']} =====")
            print(message["content"])
    if args.schema:
        print("===== schema =====")
        print(json.dumps(pipe.binding(args.role).schema, indent=2))
    return 0
