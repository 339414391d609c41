"""overhead: client CPU per model call, aidsafe vs a bare LangGraph graph vs plain AsyncOpenAI.

The three clients run the same prompts, one after another in each repeat, against the zero-latency
server, after a warm-up of 16 prompts each. CPU is ``time.process_time()`` of this process over the
run, divided by the calls the server counted. Target: aidsafe / bare LangGraph <= 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aidsafe.testing import SimServer
from bench.baselines import rendered_calls, run_baseline
from bench.common import log, make_prompts, median, medians, run_aidsafe, write_prompts
from bench.report import Row, fmt

__all__ = ["measure", "rows"]


def measure(args: argparse.Namespace, tmp: Path, shared: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark (``--overhead-prompts``, ``--overhead-concurrency``, ``--repeats``, ``--profile``)."""
    n, c = args.overhead_prompts, args.overhead_concurrency
    prompts = make_prompts(n, seed=1)
    inp = write_prompts(tmp / "overhead.jsonl", n, seed=1)
    msgs, formats = rendered_calls(prompts)
    runs: dict[str, list[dict[str, Any]]] = {"aidsafe": [], "langgraph": [], "plain": []}
    with SimServer(latency=0.0, process=True) as server:
        # warm-up (imports, first connections, caches) outside the measurements
        warm = write_prompts(tmp / "warm.jsonl", 16, seed=9)
        run_aidsafe(server, warm, tmp / "warm.out.jsonl", c)
        run_baseline("langgraph", server, msgs[:16], formats, c)
        run_baseline("plain", server, msgs[:16], formats, c)
        for r in range(args.repeats):
            runs["aidsafe"].append(run_aidsafe(server, inp, tmp / "overhead.out.jsonl", c))
            runs["langgraph"].append(run_baseline("langgraph", server, msgs, formats, c))
            runs["plain"].append(run_baseline("plain", server, msgs, formats, c))
            log(
                f"overhead repeat {r + 1}: cpu ms/call aidsafe {runs['aidsafe'][-1]['cpu_ms_per_call']:.3f}, "
                f"langgraph {runs['langgraph'][-1]['cpu_ms_per_call']:.3f}, plain {runs['plain'][-1]['cpu_ms_per_call']:.3f}"
            )
        if args.profile:
            _profile(server, inp, tmp / "overhead.out.jsonl", c, args.profile)
    keys = ["cpu_ms_per_call", "calls_per_s", "wall_s", "calls"]
    med = {k: medians(v, keys) for k, v in runs.items()}
    ratios = [a["cpu_ms_per_call"] / b["cpu_ms_per_call"] for a, b in zip(runs["aidsafe"], runs["langgraph"])]
    ratios_plain = [a["cpu_ms_per_call"] / b["cpu_ms_per_call"] for a, b in zip(runs["aidsafe"], runs["plain"])]
    return {
        "params": {"prompts": n, "concurrency": c, "latency_s": 0.0, "calls_per_prompt": 4},
        "median": {
            **{f"{k}_cpu_ms_per_call": v["cpu_ms_per_call"] for k, v in med.items()},
            **{f"{k}_calls_per_s": v["calls_per_s"] for k, v in med.items()},
            "ratio_aidsafe_over_langgraph": median(ratios),
            "ratio_aidsafe_over_plain": median(ratios_plain),
            "aidsafe_calls": med["aidsafe"]["calls"],
        },
        "target": {"ratio_aidsafe_over_langgraph": "<= 2"},
        "met": median(ratios) <= 2.0,
        "runs": runs,
    }


def _profile(server: SimServer, inp: Path, out: Path, concurrency: int, dest: str) -> None:
    """One aidsafe run under cProfile (slower than unprofiled); stats to ``dest``, top 25 printed."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    run_aidsafe(server, inp, out, concurrency)
    prof.disable()
    prof.dump_stats(dest)
    pstats.Stats(dest, stream=sys.stderr).sort_stats("cumulative").print_stats(25)


def rows(result: dict[str, Any]) -> list[Row]:
    """The table rows of a ``measure`` result."""
    m, p = result["median"], result["params"]
    tag = f"overhead ({p['prompts']} prompts, c={p['concurrency']}, 0 s)"
    return [
        Row(tag, "client CPU ms / call: aidsafe", fmt(m["aidsafe_cpu_ms_per_call"], 3)),
        Row(tag, "client CPU ms / call: bare LangGraph + AsyncOpenAI", fmt(m["langgraph_cpu_ms_per_call"], 3)),
        Row(tag, "client CPU ms / call: plain AsyncOpenAI", fmt(m["plain_cpu_ms_per_call"], 3)),
        Row(tag, "ratio aidsafe / bare LangGraph", fmt(m["ratio_aidsafe_over_langgraph"]), "<= 2", result["met"]),
        Row(tag, "ratio aidsafe / plain AsyncOpenAI", fmt(m["ratio_aidsafe_over_plain"])),
        Row(tag, "calls/s: aidsafe / LangGraph / plain",
            f"{fmt(m['aidsafe_calls_per_s'], 0)} / {fmt(m['langgraph_calls_per_s'], 0)} / {fmt(m['plain_calls_per_s'], 0)}"),
    ]
