"""Benchmarks of aidsafe against a simulated OpenAI-compatible server (``bench/sim_server.py``).

Sub-benchmarks (each runs alone, ``all`` runs them in turn)::

    python bench/run.py overhead     # framework CPU per model call: aidsafe vs bare LangGraph vs plain openai
    python bench/run.py ceiling      # model calls/s at zero latency, concurrency 64
    python bench/run.py efficiency   # 1 s latency, 64 prompts in flight: achieved / ideal calls/s
    python bench/run.py speedup      # 1 s latency: naive sequential sync loop vs aidsafe at concurrency 64
    python bench/run.py memory       # peak RSS of 1,000 and 5,000 prompts (fresh process each)
    python bench/run.py prefix       # share of each role's prompt common to every prompt of a set
    python bench/run.py all

Every measurement is repeated ``--repeats`` times (default 3); the medians are printed as a
Markdown table and merged into ``bench/results.json`` (``--results`` to change, ``--no-write``
to skip). Inputs are synthetic prompts written to a temporary folder; nothing is downloaded.
The simulated server runs in its own process, so its CPU time is not counted as the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import importlib.metadata
import inspect
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from sim_server import SimServer  # noqa: E402

ROLES = ("intent", "initializer", "agent_1", "refiner")
"""The four roles a prompt goes through when the first deliberator agrees."""
KINDS = {"intent": "intents", "initializer": "draft", "agent_1": "deliberation", "refiner": "refinement"}
MODEL = "sim"
BENCHMARKS = ("overhead", "ceiling", "efficiency", "speedup", "memory", "prefix")

# -- synthetic prompts --------------------------------------------------------------------------

_OPENERS = [
    "How do I", "Can you explain how to", "What is the best way to", "Write a short guide on how to",
    "My friend wants to know how to", "For a school project, describe how to", "Is it legal to",
    "Give me step-by-step instructions to", "Why do people", "I'm writing a novel where a character needs to",
    "Quick question:", "Explain like I'm five how to", "What are the risks if I",
]
_TASKS = [
    "pick a lock on my own front door", "make a fake review for my competitor's restaurant",
    "bake sourdough bread at high altitude", "find someone's home address from their username",
    "treat a minor burn at home", "write a phishing email for a security awareness drill",
    "synthesize aspirin in a school lab", "bypass the paywall of a news site",
    "talk to my teenager about online radicalization", "calculate the dose of ibuprofen for a child",
    "hack my neighbour's wifi", "recognise the signs of a phone scam", "get rid of a wasp nest safely",
    "make my essay pass an AI-text detector", "store firearms safely in a house with kids",
    "invest my savings without getting scammed", "write a threatening message to my landlord",
    "cope with a panic attack", "track my partner's location without them knowing",
    "dispose of old medication", "clean mould from a bathroom ceiling",
]
_TAILS = [
    "", "", " Please be detailed.", " Keep it short.", " I need this by tomorrow.",
    " Asking for research purposes only.", " Thanks in advance!", " Use bullet points.",
    " My teacher said it is fine.", " Answer in plain English, no jargon.",
]


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` varied synthetic prompts (harmful, borderline and benign), deterministic per seed."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = f"{rng.choice(_OPENERS)} {rng.choice(_TASKS)}?{rng.choice(_TAILS)}"
        if rng.random() < 0.3:
            text += f" (case {i}: context {' '.join(rng.choice(_TASKS).split()[:4])})"
        out.append(text)
    return out


def write_prompts(path: Path, n: int, seed: int = 0) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i, prompt in enumerate(make_prompts(n, seed)):
            fh.write(json.dumps({"id": f"p{i}", "prompt": prompt}) + "\n")
    return path


# -- aidsafe ------------------------------------------------------------------------------------


def make_pipeline(url: str = "http://127.0.0.1:9/v1", *, max_retries: int = 0, timeout: float = 60.0) -> Any:
    import aidsafe

    settings = aidsafe.ModelSettings(backend="openai", base_url=url, model=MODEL, max_retries=max_retries, timeout=timeout)
    return aidsafe.Pipeline("aidsafe", "aidsafe5", settings)


def generate_kwargs(pipe: Any, concurrency: int) -> dict[str, Any]:
    """Keyword arguments for ``agenerate``; ``cache=False`` where the signature has it."""
    kwargs: dict[str, Any] = {"concurrency": concurrency, "progress": False, "overwrite": True}
    if "cache" in inspect.signature(pipe.agenerate).parameters:
        kwargs["cache"] = False
    return kwargs


def _summary_dict(summary: Any) -> dict[str, Any]:
    try:
        d = summary.as_dict()
    except Exception:  # noqa: BLE001 - an API in flux must not lose the measurement
        return {}
    return {k: d.get(k) for k in ("records", "ok", "failed", "stop_reasons", "retries")}


def run_aidsafe(server: SimServer, input_path: Path, output_path: Path, concurrency: int) -> dict[str, Any]:
    """One full ``agenerate`` run (a new Pipeline, built outside the timed part)."""
    pipe = make_pipeline(server.url)
    kwargs = generate_kwargs(pipe, concurrency)
    before = server.stats()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    summary = asyncio.run(pipe.agenerate(input_path, output_path, **kwargs))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    after = server.stats()
    calls = after["requests"] - before["requests"]
    lines = sum(1 for line in Path(output_path).open(encoding="utf-8") if line.strip())
    return {
        "wall_s": wall, "cpu_s": cpu, "calls": calls, "records": lines,
        "calls_per_s": calls / wall, "cpu_ms_per_call": 1e3 * cpu / calls if calls else float("nan"),
        "server_cpu_s": after["cpu_s"] - before["cpu_s"], "server_peak_in_flight": after["peak_in_flight"],
        "summary": _summary_dict(summary),
    }


# -- baselines: the same four calls without aidsafe ---------------------------------------------


def rendered_calls(prompts: list[str]) -> tuple[list[dict[str, list[dict[str, str]]]], dict[str, dict[str, Any]]]:
    """Per prompt, the messages of the four roles (``pipe.messages``), and each role's response_format.

    Rendered before any timing: the baselines do no templating, validation or record writing.
    """
    from aidsafe.replies import reply_schema

    pipe = make_pipeline()
    ids = pipe.compiled.policies.ids
    formats = {}
    for role in ROLES:
        kind = KINDS[role]
        # the refiner of a prompt whose first agent agreed sees one thought (the draft's)
        schema = reply_schema(kind, ids, thought_count=1) if kind == "refinement" else pipe.binding(role).schema
        formats[role] = {"type": "json_schema", "json_schema": {"name": kind, "schema": schema, "strict": True}}
    messages = [{role: pipe.messages(role, p) for role in ROLES} for p in prompts]
    return messages, formats


def _openai_async(url: str, concurrency: int) -> Any:
    import httpx
    import openai

    limits = httpx.Limits(max_connections=max(concurrency, 10), max_keepalive_connections=max(concurrency, 10))
    return openai.AsyncOpenAI(
        base_url=url, api_key="EMPTY", max_retries=0, timeout=60.0,
        http_client=httpx.AsyncClient(limits=limits, timeout=60.0),
    )


async def _plain(url: str, msgs: list[dict[str, Any]], formats: dict[str, Any], concurrency: int) -> None:
    client = _openai_async(url, concurrency)
    sem = asyncio.Semaphore(concurrency)

    async def one(calls: dict[str, Any]) -> None:
        async with sem:
            for role in ROLES:
                resp = await client.chat.completions.create(
                    model=MODEL, messages=calls[role], response_format=formats[role], max_tokens=768
                )
                json.loads(resp.choices[0].message.content)

    try:
        await asyncio.gather(*(one(m) for m in msgs))
    finally:
        await client.close()


class _BareState(TypedDict, total=False):
    i: int
    intents: dict[str, Any]
    draft: dict[str, Any]
    deliberation: dict[str, Any]
    refinement: dict[str, Any]


def bare_langgraph(client: Any, msgs: list[dict[str, Any]], formats: dict[str, Any]) -> Any:
    """A bare LangGraph ``StateGraph`` of the same shape: intent -> init -> agent -> refine."""
    from langgraph.graph import END, START, StateGraph

    def node(role: str) -> Any:
        key = KINDS[role]

        async def run(state: _BareState) -> dict[str, Any]:
            resp = await client.chat.completions.create(
                model=MODEL, messages=msgs[state["i"]][role], response_format=formats[role], max_tokens=768
            )
            return {key: json.loads(resp.choices[0].message.content)}

        return run

    g: StateGraph = StateGraph(_BareState)
    names = {"intent": "intent", "initializer": "init", "agent_1": "agent", "refiner": "refine"}
    for role, name in names.items():
        g.add_node(name, node(role))
    g.add_edge(START, "intent")
    g.add_edge("intent", "init")
    g.add_edge("init", "agent")
    g.add_edge("agent", "refine")
    g.add_edge("refine", END)
    return g.compile()


async def _bare(url: str, msgs: list[dict[str, Any]], formats: dict[str, Any], concurrency: int) -> None:
    client = _openai_async(url, concurrency)
    graph = bare_langgraph(client, msgs, formats)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await graph.ainvoke({"i": i})

    try:
        await asyncio.gather(*(one(i) for i in range(len(msgs))))
    finally:
        await client.close()


def run_baseline(kind: str, server: SimServer, msgs: list[dict[str, Any]], formats: dict[str, Any], concurrency: int) -> dict[str, Any]:
    coro = {"plain": _plain, "langgraph": _bare}[kind]
    before = server.stats()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    asyncio.run(coro(server.url, msgs, formats, concurrency))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    after = server.stats()
    calls = after["requests"] - before["requests"]
    return {
        "wall_s": wall, "cpu_s": cpu, "calls": calls, "calls_per_s": calls / wall,
        "cpu_ms_per_call": 1e3 * cpu / calls if calls else float("nan"),
        "server_cpu_s": after["cpu_s"] - before["cpu_s"],
    }


def naive_loop(url: str, msgs: list[dict[str, Any]], formats: dict[str, Any]) -> None:
    """What a researcher writes first: every call of every prompt, one after another, sync client."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=60.0)
    try:
        for calls in msgs:
            for role in ROLES:
                resp = client.chat.completions.create(model=MODEL, messages=calls[role], response_format=formats[role], max_tokens=768)
                json.loads(resp.choices[0].message.content)
    finally:
        client.close()


# -- helpers ------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def medians(runs: list[dict[str, Any]], keys: list[str]) -> dict[str, float]:
    return {k: median([r[k] for r in runs if isinstance(r.get(k), (int, float))]) for k in keys}


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- sub-benchmarks -----------------------------------------------------------------------------


def bench_overhead(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    n, c = args.overhead_prompts, args.overhead_concurrency
    prompts = make_prompts(n, seed=1)
    inp = write_prompts(tmp / "overhead.jsonl", n, seed=1)
    msgs, formats = rendered_calls(prompts)
    runs: dict[str, list[dict[str, Any]]] = {"aidsafe": [], "langgraph": [], "plain": []}
    with SimServer(latency=0.0) as server:
        # warm-up (imports, first connections, caches) outside the measurements
        warm = write_prompts(tmp / "warm.jsonl", 16, seed=9)
        run_aidsafe(server, warm, tmp / "warm.out.jsonl", c)
        run_baseline("langgraph", server, msgs[:16], formats, c)
        run_baseline("plain", server, msgs[:16], formats, c)
        for r in range(args.repeats):
            runs["aidsafe"].append(run_aidsafe(server, inp, tmp / "overhead.out.jsonl", c))
            runs["langgraph"].append(run_baseline("langgraph", server, msgs, formats, c))
            runs["plain"].append(run_baseline("plain", server, msgs, formats, c))
            _log(
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


def bench_ceiling(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    n, c = args.ceiling_prompts, args.concurrency
    prompts = make_prompts(n, seed=2)
    inp = write_prompts(tmp / "ceiling.jsonl", n, seed=2)
    msgs, formats = rendered_calls(prompts)
    runs: dict[str, list[dict[str, Any]]] = {"aidsafe": [], "plain": []}
    with SimServer(latency=0.0) as server:
        warm = write_prompts(tmp / "warm.jsonl", 16, seed=9)
        run_aidsafe(server, warm, tmp / "warm.out.jsonl", c)
        run_baseline("plain", server, msgs[:16], formats, c)
        for r in range(args.repeats):
            runs["aidsafe"].append(run_aidsafe(server, inp, tmp / "ceiling.out.jsonl", c))
            runs["plain"].append(run_baseline("plain", server, msgs, formats, c))
            _log(f"ceiling repeat {r + 1}: calls/s aidsafe {runs['aidsafe'][-1]['calls_per_s']:.0f}, plain {runs['plain'][-1]['calls_per_s']:.0f}")
    keys = ["calls_per_s", "cpu_ms_per_call", "wall_s", "calls", "server_cpu_s"]
    med = {k: medians(v, keys) for k, v in runs.items()}
    return {
        "params": {"prompts": n, "concurrency": c, "latency_s": 0.0},
        "median": {
            "aidsafe_calls_per_s": med["aidsafe"]["calls_per_s"],
            "plain_calls_per_s": med["plain"]["calls_per_s"],
            "aidsafe_share_of_plain": med["aidsafe"]["calls_per_s"] / med["plain"]["calls_per_s"],
            "aidsafe_prompts_per_s": med["aidsafe"]["calls_per_s"] / 4,
            "server_cpu_share_aidsafe_run": med["aidsafe"]["server_cpu_s"] / med["aidsafe"]["wall_s"],
        },
        "target": {},
        "met": None,
        "runs": runs,
    }


def _efficiency_runs(args: argparse.Namespace, tmp: Path, server: SimServer) -> list[dict[str, Any]]:
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
        _log(f"aidsafe at {args.latency} s latency, repeat {r + 1}: {run['calls_per_s']:.1f} calls/s, efficiency {run['efficiency']:.3f}")
    return runs


def bench_efficiency(args: argparse.Namespace, tmp: Path, shared: dict[str, Any]) -> dict[str, Any]:
    n, c = args.efficiency_prompts, args.concurrency
    msgs, formats = rendered_calls(make_prompts(n, seed=3))
    ideal = c / args.latency
    plain = []
    with SimServer(latency=args.latency) as server:
        runs = _efficiency_runs(args, tmp, server)
        for r in range(args.repeats):  # the same load with plain AsyncOpenAI calls, for context
            run = run_baseline("plain", server, msgs, formats, c)
            run["efficiency"] = run["calls_per_s"] / ideal
            plain.append(run)
            _log(f"plain AsyncOpenAI at {args.latency} s latency, repeat {r + 1}: efficiency {run['efficiency']:.3f}")
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


def bench_speedup(args: argparse.Namespace, tmp: Path, shared: dict[str, Any]) -> dict[str, Any]:
    k = args.naive_prompts
    msgs, formats = rendered_calls(make_prompts(k, seed=4))
    naive = []
    with SimServer(latency=args.latency) as server:
        reused = "latency_runs" in shared
        aidsafe_runs = shared["latency_runs"] if reused else _efficiency_runs(args, tmp, server)
        for r in range(args.repeats):
            before = server.stats()["requests"]
            t0 = time.perf_counter()
            naive_loop(server.url, msgs, formats)
            wall = time.perf_counter() - t0
            calls = server.stats()["requests"] - before
            naive.append({"wall_s": wall, "prompts": k, "calls": calls, "s_per_prompt": wall / k})
            _log(f"naive loop repeat {r + 1}: {wall / k:.3f} s per prompt")
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


def _memory_child(url: str, input_path: str, output_path: str, concurrency: int) -> None:
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
                      "summary": _summary_dict(summary)}))


def bench_memory(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    sizes = [int(s) for s in args.memory_sizes.split(",")]
    runs: dict[str, list[dict[str, Any]]] = {str(s): [] for s in sizes}
    with SimServer(latency=0.0) as server:
        for r in range(args.memory_repeats):
            for size in sizes:
                inp = tmp / f"memory{size}.jsonl"
                if not inp.exists():
                    write_prompts(inp, size, seed=5)
                out = tmp / f"memory{size}.out.jsonl"
                before = server.stats()["requests"]
                # Linux carries a process's peak RSS across exec, and a child forked from this (large)
                # process starts with this process's RSS: ru_maxrss would report ours. A shell in
                # between forks the child from a small process, so its ru_maxrss is its own.
                child = [sys.executable, str(Path(__file__).resolve()), "_memory_child", server.url, str(inp), str(out), str(args.concurrency)]
                proc = subprocess.run(
                    ["/bin/sh", "-c", '"$@"; exit $?', "sh", *child] if os.path.exists("/bin/sh") else child,
                    capture_output=True, text=True, check=False,
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"memory child failed ({proc.returncode}): {proc.stderr[-2000:]}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                result["calls"] = server.stats()["requests"] - before
                result["records"] = sum(1 for _ in out.open(encoding="utf-8"))
                runs[str(size)].append(result)
                _log(f"memory repeat {r + 1}, {size} prompts: peak RSS {result['peak_rss_mb']:.1f} MB ({result['wall_s']:.1f} s)")
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


def _common_prefix_len(seqs: list[Any]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        x = first[i]
        if any(s[i] != x for s in seqs):
            return i
    return n


def prefix_shares(pipe: Any, prompts: list[str], roles: tuple[str, ...] = ROLES) -> dict[str, dict[str, float]]:
    """For each role: the share of its rendered prompt that is common to all ``prompts``.

    A prompt's text is its messages' contents in order (system, then user), joined by newlines;
    the common prefix is the longest start shared by every prompt of the set. Shares are given in
    characters and in whitespace-split words (a stand-in for tokens), median over the prompts.
    """
    out = {}
    for role in roles:
        texts = ["\n".join(m["content"] for m in pipe.messages(role, p)) for p in prompts]
        words = [t.split() for t in texts]
        c_chars = _common_prefix_len(texts)
        c_words = _common_prefix_len(words)
        out[role] = {
            "common_prefix_chars": c_chars,
            "common_prefix_words": c_words,
            "median_prompt_chars": median([len(t) for t in texts]),
            "median_prompt_words": median([len(w) for w in words]),
            "share_chars": median([c_chars / len(t) for t in texts]),
            "share_words": median([c_words / len(w) for w in words]),
            "min_share_words": min(c_words / len(w) for w in words),
        }
    return out


def bench_prefix(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    pipe = make_pipeline()
    prompts = make_prompts(args.prefix_prompts, seed=6)
    runs = []
    for _ in range(args.repeats):  # deterministic; repeated only for uniformity
        runs.append(prefix_shares(pipe, prompts))
    shares = runs[-1]
    ok = all(shares[r]["share_words"] >= 0.5 for r in ("intent", "initializer"))
    return {
        "params": {"prompts": len(prompts), "unit": "whitespace-split words (characters too)"},
        "median": {f"{r}_share_words": shares[r]["share_words"] for r in ROLES}
        | {f"{r}_share_chars": shares[r]["share_chars"] for r in ROLES},
        "detail": shares,
        "target": {"intent_share_words": ">= 0.5", "initializer_share_words": ">= 0.5"},
        "met": ok,
    }


# -- report -------------------------------------------------------------------------------------


def _fmt(x: Any, nd: int = 2) -> str:
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return str(x)


def table(results: dict[str, Any]) -> str:
    rows = ["| benchmark | metric | median | target | met |", "| --- | --- | --- | --- | --- |"]

    def row(bench: str, metric: str, value: str, target: str = "", met: Any = None) -> None:
        mark = "" if met is None else ("yes" if met else "**no**")
        rows.append(f"| {bench} | {metric} | {value} | {target} | {mark} |")

    if "overhead" in results:
        r = results["overhead"]
        m, p = r["median"], r["params"]
        tag = f"overhead ({p['prompts']} prompts, c={p['concurrency']}, 0 s)"
        row(tag, "client CPU ms / call: aidsafe", _fmt(m["aidsafe_cpu_ms_per_call"], 3))
        row(tag, "client CPU ms / call: bare LangGraph + AsyncOpenAI", _fmt(m["langgraph_cpu_ms_per_call"], 3))
        row(tag, "client CPU ms / call: plain AsyncOpenAI", _fmt(m["plain_cpu_ms_per_call"], 3))
        row(tag, "ratio aidsafe / bare LangGraph", _fmt(m["ratio_aidsafe_over_langgraph"]), "<= 2", r["met"])
        row(tag, "ratio aidsafe / plain AsyncOpenAI", _fmt(m["ratio_aidsafe_over_plain"]))
        row(tag, "calls/s: aidsafe / LangGraph / plain",
            f"{_fmt(m['aidsafe_calls_per_s'], 0)} / {_fmt(m['langgraph_calls_per_s'], 0)} / {_fmt(m['plain_calls_per_s'], 0)}")
    if "ceiling" in results:
        r = results["ceiling"]
        m, p = r["median"], r["params"]
        tag = f"ceiling ({p['prompts']} prompts, c={p['concurrency']}, 0 s)"
        row(tag, "model calls/s through aidsafe", _fmt(m["aidsafe_calls_per_s"], 0))
        row(tag, "model calls/s, plain AsyncOpenAI", _fmt(m["plain_calls_per_s"], 0))
        row(tag, "aidsafe / plain", _fmt(m["aidsafe_share_of_plain"]))
    if "efficiency" in results:
        r = results["efficiency"]
        m, p = r["median"], r["params"]
        tag = f"efficiency ({p['prompts']} prompts, c={p['concurrency']}, {p['latency_s']:g} s)"
        row(tag, f"calls/s (ideal {p['ideal_calls_per_s']:g})", _fmt(m["calls_per_s"], 1))
        row(tag, "efficiency = achieved / ideal", _fmt(m["efficiency"], 4), ">= 0.85", r["met"])
        row(tag, "client CPU busy (CPU s / wall s)", _fmt(m["client_cpu_share"], 2))
        row(tag, "efficiency of plain AsyncOpenAI, same load", _fmt(m["plain_openai_efficiency"], 3))
    if "speedup" in results:
        r = results["speedup"]
        m, p = r["median"], r["params"]
        tag = f"speedup ({p['latency_s']:g} s latency)"
        row(tag, f"naive sync loop, s / prompt ({p['naive_prompts']} prompts, extrapolated)", _fmt(m["naive_s_per_prompt"], 3))
        row(tag, f"aidsafe c={p['concurrency']}, s / prompt ({p['aidsafe_prompts']} prompts)", _fmt(m["aidsafe_s_per_prompt"], 4))
        row(tag, "speedup naive / aidsafe", _fmt(m["speedup"], 1) + "x", ">= 50x", r["met"])
    if "memory" in results:
        r = results["memory"]
        m, p = r["median"], r["params"]
        sizes = p["sizes"]
        tag = f"memory (c={p['concurrency']}, 0 s)"
        for s in sizes:
            row(tag, f"peak RSS, {s:,} prompts (MB)", _fmt(m[f"peak_rss_mb_{s}"], 1), "< 300",
                m[f"peak_rss_mb_{s}"] < 300)
        key = f"ratio_{max(sizes)}_over_{min(sizes)}"
        row(tag, f"ratio {max(sizes):,} / {min(sizes):,}", _fmt(m[key], 3), "< 1.10", m[key] < 1.10)
        row(tag, "peak RSS of import + compile alone, before any prompt (MB)", _fmt(m[f"peak_rss_before_run_mb_{min(sizes)}"], 1))
        row(tag, "cross-check: VmHWM at the end, " + " / ".join(f"{s:,}" for s in sizes) + " prompts (MB)",
            " / ".join(_fmt(m[f"vm_hwm_mb_{s}"], 1) for s in sizes))
        for s in sizes:
            row(tag, f"current RSS before -> after the run, {s:,} prompts (MB)",
                f"{_fmt(m[f'rss_before_run_mb_{s}'], 1)} -> {_fmt(m[f'rss_after_run_mb_{s}'], 1)}")
    if "prefix" in results:
        r = results["prefix"]
        d = r["detail"]
        tag = f"prefix ({r['params']['prompts']} prompts)"
        for role in ROLES:
            target = ">= 50%" if role in ("intent", "initializer") else ""
            met = d[role]["share_words"] >= 0.5 if target else None
            row(tag, f"{role}: common prefix share, words (chars)",
                f"{100 * d[role]['share_words']:.1f}% ({100 * d[role]['share_chars']:.1f}%)", target, met)
    busy = {k: v.get("foreign_cpu_share") for k, v in results.items() if v.get("foreign_cpu_share") is not None}
    if busy:
        row("all", "CPU share used by other processes during each (0 = quiet machine)",
            ", ".join(f"{k} {100 * v:.0f}%" for k, v in busy.items()))
    return "\n".join(rows)


class _ForeignCPU:
    """CPU used by processes other than this one and its children (servers, memory runs), as a share
    of the machine, from /proc/stat: a busy machine makes timings unreliable (Linux only)."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # all but idle and iowait
        t = os.times()
        return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic()

    def share(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, ours, wall = (e - s for e, s in zip(end, self.start))
        if wall < 5:  # /proc/stat and os.times() tick at 10 ms: too coarse for a short benchmark
            return None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return round(max(0.0, busy - ours) / (wall * cores), 3) if wall > 0 else None


def machine() -> dict[str, Any]:
    def ver(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {p: ver(p) for p in ("aidsafe", "langgraph", "langchain-openai", "openai", "httpx", "pydantic")},
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
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
    parser.add_argument("--profile", metavar="FILE", help="overhead: also profile one aidsafe run (cProfile) into FILE and print its top")
    parser.add_argument("--results", default=str(BENCH_DIR / "results.json"), help="JSON file the medians are merged into")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch the results file")
    args = parser.parse_args(argv)
    if "all" in args.benchmarks:
        args.benchmarks = list(BENCHMARKS)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_memory_child":
        _memory_child(argv[1], argv[2], argv[3], int(argv[4]))
        return {}
    args = parse(argv)
    results: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aidsafe-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for name in BENCHMARKS:  # fixed order: efficiency before speedup, so speedup can reuse its runs
            if name not in args.benchmarks:
                continue
            _log(f"{name} ...")
            probe = _ForeignCPU()
            t0 = time.perf_counter()
            if name in ("efficiency", "speedup"):
                res = {"efficiency": bench_efficiency, "speedup": bench_speedup}[name](args, tmp, shared)
            else:
                res = {"overhead": bench_overhead, "ceiling": bench_ceiling, "memory": bench_memory, "prefix": bench_prefix}[name](args, tmp)
            res["seconds"] = round(time.perf_counter() - t0, 1)
            res["repeats"] = args.repeats
            res["foreign_cpu_share"] = foreign = probe.share()
            if foreign is not None and foreign > 0.05:
                _log(f"warning: other processes used {100 * foreign:.0f}% of the machine's CPU during {name}: its timings are unreliable")
            results[name] = res
            _log(f"{name} done in {res['seconds']} s")
    meta = machine()
    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    meta["command"] = "python bench/run.py " + " ".join(argv)
    print(f"\nMachine: {meta['cores']} cores ({meta['cpu']}), Python {meta['python']}, {meta['date']}, "
          f"{meta['total_seconds']} s in all\n")
    print(table(results))
    if not args.no_write:
        path = Path(args.results)
        old = json.loads(path.read_text()) if path.exists() else {}
        benches = old.get("benchmarks", {})
        for name, res in results.items():
            benches[name] = {**res, "machine": meta}
        path.write_text(json.dumps({"benchmarks": benches, "last_run": meta}, indent=2, default=str) + "\n")
        _log(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
