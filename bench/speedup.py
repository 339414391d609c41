"""speedup: the naive sequential sync loop against aidsafe at ``--concurrency``, per prompt.

The naive loop is measured on ``--naive-prompts`` prompts and extrapolated per prompt. aidsafe's
side is ``efficiency``'s load: when ``efficiency`` ran first (as in ``all``) its runs are reused
from ``shared``, otherwise they are measured here. Target: >= 50x.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from aidsafe.testing import SimServer
from bench.baselines import naive_loop, rendered_calls
from bench.common import log, make_prompts, median
from bench.efficiency import latency_runs
from bench.report import Row, fmt

__all__ = ["measure", "rows"]


def measure(args: argparse.Namespace, tmp: Path, shared: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark (``--naive-prompts``, ``--latency``, ``--repeats``; aidsafe's side as ``efficiency``)."""
    k = args.naive_prompts
    msgs, formats = rendered_calls(make_prompts(k, seed=4))
    naive = []
    with SimServer(latency=args.latency, process=True) as server:
        reused = "latency_runs" in shared
        aidsafe_runs = shared["latency_runs"] if reused else latency_runs(args, tmp, server)
        for r in range(args.repeats):
            before = server.stats()["requests"]
            t0 = time.perf_counter()
            naive_loop(server.url, msgs, formats)
            wall = time.perf_counter() - t0
            calls = server.stats()["requests"] - before
            naive.append({"wall_s": wall, "prompts": k, "calls": calls, "s_per_prompt": wall / k})
            log(f"naive loop repeat {r + 1}: {wall / k:.3f} s per prompt")
    naive_pp = median([x["s_per_prompt"] for x in naive])
    aidsafe_pp = median([x["s_per_prompt"] for x in aidsafe_runs])
    speed = naive_pp / aidsafe_pp
    return {
        "params": {"latency_s": args.latency, "naive_prompts": k, "aidsafe_prompts": args.efficiency_prompts,
                   "concurrency": args.concurrency, "aidsafe_runs_shared_with_efficiency": reused},
        "median": {"naive_s_per_prompt": naive_pp, "aidsafe_s_per_prompt": aidsafe_pp, "speedup": speed,
                   "naive_extrapolated_s_for_aidsafe_prompts": naive_pp * args.efficiency_prompts},
        "target": {"speedup": ">= 50"},
        "met": speed >= 50,
        "runs": {"naive": naive, "aidsafe": aidsafe_runs},
    }


def rows(result: dict[str, Any]) -> list[Row]:
    """The table rows of a ``measure`` result."""
    m, p = result["median"], result["params"]
    tag = f"speedup ({p['latency_s']:g} s latency)"
    return [
        Row(tag, f"naive sync loop, s / prompt ({p['naive_prompts']} prompts, extrapolated)", fmt(m["naive_s_per_prompt"], 3)),
        Row(tag, f"aidsafe c={p['concurrency']}, s / prompt ({p['aidsafe_prompts']} prompts)", fmt(m["aidsafe_s_per_prompt"], 4)),
        Row(tag, "speedup naive / aidsafe", fmt(m["speedup"], 1) + "x", ">= 50x", result["met"]),
    ]
