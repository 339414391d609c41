"""efficiency: with ``--latency`` seconds per call, achieved calls/s over the ideal.

aidsafe keeps ``--concurrency`` prompts in flight; the ideal is that many calls always in flight,
each taking the latency (64 calls/s at the defaults). Target: >= 0.85. Plain AsyncOpenAI under the
same load is measured alongside for context. Its aidsafe runs are kept in ``shared`` for
``speedup``, which compares the same load with the naive loop.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aidsafe.testing import SimServer
from bench.baselines import rendered_calls, run_baseline
from bench.common import log, make_prompts, median, medians, run_aidsafe, write_prompts
from bench.report import Row, fmt

__all__ = ["latency_runs", "measure", "rows"]


def latency_runs(args: argparse.Namespace, tmp: Path, server: SimServer) -> list[dict[str, Any]]:
    """``--repeats`` aidsafe runs of ``--efficiency-prompts`` against ``server`` (at ``--latency``)."""
    n, c = args.efficiency_prompts, args.concurrency
    inp = write_prompts(tmp / "efficiency.jsonl", n, seed=3)
    runs = []
    for r in range(args.repeats):
        run = run_aidsafe(server, inp, tmp / "efficiency.out.jsonl", c)
        ideal = c * 1.0 / args.latency  # calls/s with c prompts always in flight, each call taking `latency`
        run["ideal_calls_per_s"] = ideal
        run["efficiency"] = run["calls_per_s"] / ideal
        run["s_per_prompt"] = run["wall_s"] / n
        runs.append(run)
        log(f"aidsafe at {args.latency} s latency, repeat {r + 1}: {run['calls_per_s']:.1f} calls/s, efficiency {run['efficiency']:.3f}")
    return runs


def measure(args: argparse.Namespace, tmp: Path, shared: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark (``--efficiency-prompts``, ``--concurrency``, ``--latency``, ``--repeats``)."""
    n, c = args.efficiency_prompts, args.concurrency
    msgs, formats = rendered_calls(make_prompts(n, seed=3))
    ideal = c / args.latency
    plain = []
    with SimServer(latency=args.latency, process=True) as server:
        runs = latency_runs(args, tmp, server)
        for r in range(args.repeats):  # the same load with plain AsyncOpenAI calls, for context
            run = run_baseline("plain", server, msgs, formats, c)
            run["efficiency"] = run["calls_per_s"] / ideal
            plain.append(run)
            log(f"plain AsyncOpenAI at {args.latency} s latency, repeat {r + 1}: efficiency {run['efficiency']:.3f}")
    shared["latency_runs"] = runs
    for run in runs:
        run["client_cpu_share"] = run["cpu_s"] / run["wall_s"]
    med = medians(runs, ["calls_per_s", "efficiency", "wall_s", "calls", "cpu_s", "client_cpu_share", "server_peak_in_flight"])
    return {
        "params": {"prompts": n, "concurrency": c, "latency_s": args.latency, "ideal_calls_per_s": ideal},
        "median": {"calls_per_s": med["calls_per_s"], "efficiency": med["efficiency"], "wall_s": med["wall_s"],
                   "client_cpu_s": med["cpu_s"], "client_cpu_share": med["client_cpu_share"],
                   "server_peak_in_flight": med["server_peak_in_flight"],
                   "plain_openai_efficiency": median([x["efficiency"] for x in plain])},
        "target": {"efficiency": ">= 0.85"},
        "met": med["efficiency"] >= 0.85,
        "runs": {"aidsafe": runs, "plain": plain},
    }


def rows(result: dict[str, Any]) -> list[Row]:
    """The table rows of a ``measure`` result."""
    m, p = result["median"], result["params"]
    tag = f"efficiency ({p['prompts']} prompts, c={p['concurrency']}, {p['latency_s']:g} s)"
    return [
        Row(tag, f"calls/s (ideal {p['ideal_calls_per_s']:g})", fmt(m["calls_per_s"], 1)),
        Row(tag, "efficiency = achieved / ideal", fmt(m["efficiency"], 4), ">= 0.85", result["met"]),
        Row(tag, "client CPU busy (CPU s / wall s)", fmt(m["client_cpu_share"], 2)),
        Row(tag, "efficiency of plain AsyncOpenAI, same load", fmt(m["plain_openai_efficiency"], 3)),
    ]
