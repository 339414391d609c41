"""memory: peak RSS of a full ``agenerate`` run of each size, each in a fresh process.

Each size in ``--memory-sizes`` runs against the zero-latency server at ``--concurrency``, in a child
process started as ``python bench/run.py _memory_child URL INPUT OUTPUT CONCURRENCY``; its
``ru_maxrss`` is the figure, cross-checked against ``VmHWM``, with the current RSS before and after
the run. Targets: every peak < 300 MB, largest / smallest < 1.10.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aidsafe.testing import SimServer
from bench.common import BENCH_DIR, generate_kwargs, log, make_pipeline, medians, summary_dict, write_prompts
from bench.report import Row, fmt

__all__ = ["CHILD", "child", "measure", "rows"]

CHILD = "_memory_child"
"""The sub-command of ``run.py`` that runs ``child`` in the fresh process."""


def _proc_status_mb(field: str = "VmRSS") -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak of this program image) in MB, from /proc (Linux); NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _rss_now_mb() -> float:
    return _proc_status_mb("VmRSS")


def child(url: str, input_path: str, output_path: str, concurrency: int) -> None:
    """Runs in a fresh process: import + build, note RSS, run every prompt, print peak RSS (MB).

    ``ru_maxrss`` is the peak of the whole process (imports included); the current RSS before and
    after the run shows what the run itself added.
    """
    pipe = make_pipeline(url)
    kwargs = generate_kwargs(pipe, concurrency)
    before_peak, before_now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, _rss_now_mb()
    t0 = time.perf_counter()
    summary = asyncio.run(pipe.agenerate(input_path, output_path, **kwargs))
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"peak_rss_mb": peak_mb, "peak_rss_before_run_mb": before_peak, "rss_before_run_mb": before_now,
                      "rss_after_run_mb": _rss_now_mb(), "vm_hwm_mb": _proc_status_mb("VmHWM"), "wall_s": wall,
                      "summary": summary_dict(summary)}))


def _run_child(url: str, inp: Path, out: Path, concurrency: int) -> dict[str, Any]:
    """``child`` in a fresh process; its printed result."""
    # Linux carries a process's peak RSS across exec, and a child forked from this (large)
    # process starts with this process's RSS: ru_maxrss would report ours. A shell in
    # between forks the child from a small process, so its ru_maxrss is its own.
    cmd = [sys.executable, str(BENCH_DIR / "run.py"), CHILD, url, str(inp), str(out), str(concurrency)]
    proc = subprocess.run(
        ["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd] if os.path.exists("/bin/sh") else cmd,
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, tmp: Path, shared: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark (``--memory-sizes``, ``--memory-repeats``, ``--concurrency``)."""
    sizes = [int(s) for s in args.memory_sizes.split(",")]
    runs: dict[str, list[dict[str, Any]]] = {str(s): [] for s in sizes}
    with SimServer(latency=0.0, process=True) as server:
        for r in range(args.memory_repeats):
            for size in sizes:
                inp = tmp / f"memory{size}.jsonl"
                if not inp.exists():
                    write_prompts(inp, size, seed=5)
                out = tmp / f"memory{size}.out.jsonl"
                before = server.stats()["requests"]
                result = _run_child(server.url, inp, out, args.concurrency)
                result["calls"] = server.stats()["requests"] - before
                result["records"] = sum(1 for _ in out.open(encoding="utf-8"))
                runs[str(size)].append(result)
                log(f"memory repeat {r + 1}, {size} prompts: peak RSS {result['peak_rss_mb']:.1f} MB ({result['wall_s']:.1f} s)")
    med = {s: medians(v, ["peak_rss_mb", "vm_hwm_mb", "peak_rss_before_run_mb", "rss_before_run_mb", "rss_after_run_mb", "wall_s"])
           for s, v in runs.items()}
    small, large = str(min(sizes)), str(max(sizes))
    ratio = med[large]["peak_rss_mb"] / med[small]["peak_rss_mb"]
    peak = max(m["peak_rss_mb"] for m in med.values())
    return {
        "params": {"sizes": sizes, "concurrency": args.concurrency, "latency_s": 0.0, "measure": "ru_maxrss of a fresh process per run"},
        "median": {
            **{f"peak_rss_mb_{s}": m["peak_rss_mb"] for s, m in med.items()},
            **{f"vm_hwm_mb_{s}": m["vm_hwm_mb"] for s, m in med.items()},
            **{f"peak_rss_before_run_mb_{s}": m["peak_rss_before_run_mb"] for s, m in med.items()},
            **{f"rss_before_run_mb_{s}": m["rss_before_run_mb"] for s, m in med.items()},
            **{f"rss_after_run_mb_{s}": m["rss_after_run_mb"] for s, m in med.items()},
            **{f"wall_s_{s}": m["wall_s"] for s, m in med.items()},
            f"ratio_{large}_over_{small}": ratio,
        },
        "target": {"peak_rss_mb": "< 300", f"ratio_{large}_over_{small}": "< 1.10"},
        "met": peak < 300 and ratio < 1.10,
        "runs": runs,
    }


def rows(result: dict[str, Any]) -> list[Row]:
    """The table rows of a ``measure`` result."""
    m, p = result["median"], result["params"]
    sizes = p["sizes"]
    small, large = min(sizes), max(sizes)
    tag = f"memory (c={p['concurrency']}, 0 s)"
    out = [Row(tag, f"peak RSS, {s:,} prompts (MB)", fmt(m[f"peak_rss_mb_{s}"], 1), "< 300", m[f"peak_rss_mb_{s}"] < 300)
           for s in sizes]
    key = f"ratio_{large}_over_{small}"
    out.append(Row(tag, f"ratio {large:,} / {small:,}", fmt(m[key], 3), "< 1.10", m[key] < 1.10))
    out.append(Row(tag, "peak RSS of import + compile alone, before any prompt (MB)", fmt(m[f"peak_rss_before_run_mb_{small}"], 1)))
    out.append(Row(tag, "cross-check: VmHWM at the end, " + " / ".join(f"{s:,}" for s in sizes) + " prompts (MB)",
                   " / ".join(fmt(m[f"vm_hwm_mb_{s}"], 1) for s in sizes)))
    out += [Row(tag, f"current RSS before -> after the run, {s:,} prompts (MB)",
                f"{fmt(m[f'rss_before_run_mb_{s}'], 1)} -> {fmt(m[f'rss_after_run_mb_{s}'], 1)}") for s in sizes]
    return out
