"""The paper's round ablation: the same prompts through 0, 1, 2 and 3 rounds of deliberation,
each output judged, then compared on the ids every run has (paired on the same prompts).

Rounds 0 is the ``init_only`` graph (intent decomposition, the seed CoT and response, and the
same refiner, with no deliberation). Rounds k > 0 is the ``aidsafe`` graph with ``min_rounds = max_rounds = k``:
exactly k rounds, an early agreement does not end them. Each variant is a graph file written into
the output folder, so it can be read, drawn (``aidsafe graph FILE``) and run again.

    python examples/rounds_ablation.py examples/prompts.jsonl -o ablation
    python examples/rounds_ablation.py prompts.jsonl -o ablation --rounds 0,1,2,3 -- --base-url http://localhost:8000/v1 --model M

Arguments after ``--`` go to every ``aidsafe generate`` and ``aidsafe judge`` call (backend, model,
endpoint). ``--judge-args`` sets the judge's own (e.g. another model). It writes, in ``-o``:
``graphs/rounds_K.yaml``, ``rounds_K.jsonl`` (records), ``rounds_K.judged.jsonl`` and
``compare.md`` / ``compare.json`` (``aidsafe compare``). A run that stops midway resumes: each
step resumes its own output.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import sys
from pathlib import Path

import yaml

from aidsafe.cli import main as aidsafe
from aidsafe.resources import builtin_dir


def variant(rounds: int, folder: Path) -> str:
    """The graph of ``rounds`` rounds: ``init_only`` for 0, else a file with min = max = rounds."""
    if rounds == 0:
        return "init_only"
    spec = yaml.safe_load((builtin_dir("graphs") / "aidsafe.yaml").read_text(encoding="utf-8"))
    spec["name"] = f"aidsafe-rounds-{rounds}"
    spec["description"] = f"The aidsafe recipe with exactly {rounds} deliberation round(s) (round ablation)."
    loop = spec["nodes"]["deliberate"]["loop"]
    loop["min_rounds"] = loop["max_rounds"] = rounds
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rounds_{rounds}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return str(path)


def _step(args: list[str]) -> None:
    print("$ aidsafe " + shlex.join(args), file=sys.stderr)
    code = aidsafe(args)
    if code:
        raise SystemExit(f"aidsafe {args[0]} failed (exit {code}); run the same command again to resume")


def run(prompts: str, out: Path, rounds: list[int], model_args: list[str], judge_args: list[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    judged = []
    for k in rounds:
        records = out / f"rounds_{k}.jsonl"
        _step(["generate", prompts, "-o", str(records), "--graph", variant(k, out / "graphs"), "--no-progress", *model_args])
        scored = out / f"rounds_{k}.judged.jsonl"
        _step(["judge", str(records), "-o", str(scored), "--no-progress", *model_args, *judge_args])
        judged.append(str(scored))
    table = out / "compare.md"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        _step(["compare", *judged, "--labels", *[f"rounds_{k}" for k in rounds], "--json", str(out / "compare.json")])
    table.write_text(buffer.getvalue(), encoding="utf-8")
    print(buffer.getvalue())
    return table


def parse(argv: list[str]) -> argparse.Namespace:
    own, passthrough = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts", help="prompts file (any format aidsafe generate reads)")
    p.add_argument("-o", "--output", required=True, help="folder for the graphs, records, judged records and the comparison")
    p.add_argument("--rounds", default="0,1,2,3", help="comma-separated round counts (default 0,1,2,3; 0 = init_only)")
    p.add_argument("--judge-args", default="", help="extra arguments for aidsafe judge only, as one string")
    args = p.parse_args(own)
    try:
        args.rounds = [int(r) for r in args.rounds.split(",")]
    except ValueError:
        p.error(f"--rounds: comma-separated integers, got {args.rounds!r}")
    if any(not 0 <= r <= 20 for r in args.rounds) or len(set(args.rounds)) != len(args.rounds):
        p.error("--rounds: distinct counts from 0 to 20")
    args.model_args = passthrough
    return args


if __name__ == "__main__":
    ns = parse(sys.argv[1:])
    run(ns.prompts, Path(ns.output), ns.rounds, ns.model_args, shlex.split(ns.judge_args))
