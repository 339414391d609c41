"""Benchmarks of aidsafe against a simulated OpenAI-compatible server (``bench/sim_server.py``).

Sub-benchmarks (each runs alone, ``all`` runs them in turn)::

    python bench/run.py overhead     # framework CPU per model call: aidsafe vs bare LangGraph vs plain openai
    python bench/run.py ceiling      # model calls/s at zero latency, concurrency 64
    python bench/run.py efficiency   # 1 s latency, 64 prompts in flight: achieved / ideal calls/s
    python bench/run.py speedup      # 1 s latency: naive sequential sync loop vs aidsafe at concurrency 64
    python bench/run.py memory       # peak RSS of 1,000 and 5,000 prompts (fresh process each)
    python bench/run.py prefix       # share of each role's prompt common to every prompt of a set
    python bench/run.py queueing     # a server that queues beyond 4 slots, 32 prompts in flight, --timeout 3: all ok?
    python bench/run.py all

Every measurement is repeated ``--repeats`` times (default 3); the medians are printed as a
Markdown table and merged into ``bench/results.json`` (``--results`` to change, ``--no-write``
to skip). Inputs are synthetic prompts written to a temporary folder; nothing is downloaded.
The simulated server runs in its own process, so its CPU time is not counted as the client's.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python bench/run.py: run as python -m bench.run
    import _script

    _script.run_as_module("bench.run")

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import ceiling, clients, efficiency, endpoints, memory, overhead, prefix, queueing, speedup
from bench.common import BENCH_DIR, log
from bench.machine import ForeignCPU, machine
from bench.report import table

BENCHMARKS: dict[str, ModuleType] = {
    "overhead": overhead, "ceiling": ceiling, "efficiency": efficiency,
    "speedup": speedup, "memory": memory, "prefix": prefix, "endpoints": endpoints,
    "clients": clients, "queueing": queueing,
}
"""Each benchmark's module (``measure`` and ``rows``), in the fixed order they run in: efficiency
before speedup, so speedup can reuse its runs."""


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``all`` stands for every benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("benchmarks", nargs="+", choices=(*BENCHMARKS, "all"), help="which to run")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each measurement; medians are reported (default 3)")
    parser.add_argument("--concurrency", type=int, default=64, help="prompts in flight for ceiling, efficiency, speedup, memory (64)")
    parser.add_argument("--latency", type=float, default=1.0, help="simulated seconds per call for efficiency and speedup (1.0)")
    parser.add_argument("--overhead-prompts", type=int, default=200)
    parser.add_argument("--overhead-concurrency", type=int, default=16)
    parser.add_argument("--ceiling-prompts", type=int, default=200)
    parser.add_argument("--efficiency-prompts", type=int, default=128, help="prompts at 1 s latency (also aidsafe's side of speedup)")
    parser.add_argument("--naive-prompts", type=int, default=4, help="prompts the naive sequential loop runs (then extrapolated per prompt)")
    parser.add_argument("--memory-sizes", default="1000,5000", help="comma-separated prompt counts, each in a fresh process")
    parser.add_argument(
        "--memory-repeats", type=int, default=1,
        help="repeats of memory (default 1: 6,000 prompts take ~4.5 min on 2 cores; peak RSS varies by ~1 MB between runs)",
    )
    parser.add_argument("--prefix-prompts", type=int, default=50)
    parser.add_argument("--endpoint-count", type=int, default=8, help="endpoints: simulated servers, each its own process (8)")
    parser.add_argument("--endpoint-concurrency", default="64,256", help="endpoints: comma-separated prompts in flight (64,256)")
    parser.add_argument("--clients-levels", default="64,512", help="clients: comma-separated prompts in flight in all (64,512)")
    parser.add_argument("--client-processes", default="1,2", help="clients: comma-separated numbers of client processes (1,2)")
    queueing.add_arguments(parser)
    parser.add_argument("--profile", metavar="FILE", help="overhead: also profile one aidsafe run (cProfile) into FILE and print its top")
    parser.add_argument("--results", default=str(BENCH_DIR / "results.json"), help="JSON file the medians are merged into")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch the results file")
    args = parser.parse_args(argv)
    if "all" in args.benchmarks:
        args.benchmarks = list(BENCHMARKS)
    return args


def run_one(name: str, args: argparse.Namespace, tmp: Path, shared: dict[str, Any]) -> dict[str, Any]:
    """Run benchmark ``name``; its result, with its seconds, repeats and the other processes' CPU share."""
    log(f"{name} ...")
    probe = ForeignCPU()
    t0 = time.perf_counter()
    res = BENCHMARKS[name].measure(args, tmp, shared)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["repeats"] = args.repeats
    res["foreign_cpu_share"] = foreign = probe.share()
    if foreign is not None and foreign > 0.05:
        log(f"warning: other processes used {100 * foreign:.0f}% of the machine's CPU during {name}: its timings are unreliable")
    log(f"{name} done in {res['seconds']} s")
    return res


def write_results(path: Path, results: dict[str, Any], meta: dict[str, Any]) -> None:
    """Merge ``results`` into the JSON file at ``path``, each benchmark with ``meta``; ``last_run`` is ``meta``."""
    old = json.loads(path.read_text()) if path.exists() else {}
    benches = old.get("benchmarks", {})
    for name, res in results.items():
        benches[name] = {**res, "machine": meta}
    path.write_text(json.dumps({"benchmarks": benches, "last_run": meta}, indent=2, default=str) + "\n")
    log(f"wrote {path}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen benchmarks, print the table, merge the results file; the results."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == memory.CHILD:
        memory.child(argv[1], argv[2], argv[3], int(argv[4]))
        return {}
    args = parse(argv)
    results: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aidsafe-bench-") as tmpdir:
        for name in BENCHMARKS:
            if name in args.benchmarks:
                results[name] = run_one(name, args, Path(tmpdir), shared)
    meta = machine()
    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    meta["command"] = "python bench/run.py " + " ".join(argv)
    print(f"\nMachine: {meta['cores']} cores ({meta['cpu']}), Python {meta['python']}, {meta['date']}, "
          f"{meta['total_seconds']} s in all\n")
    print(table(results, {name: module.rows for name, module in BENCHMARKS.items()}))
    if not args.no_write:
        write_results(Path(args.results), results, meta)
    return results


if __name__ == "__main__":
    main()
