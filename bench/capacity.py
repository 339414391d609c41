"""capacity: how many vLLM replicas, and how many client cores, an aidsafe generation run needs.

A throughput model, not a simulation and not a measurement of any server. It multiplies three
things together:

- the **workload**: model calls, prompt tokens and completion tokens per input prompt, read from
  the summary sidecar of a real run (``OUT.jsonl.summary.json``: its ``usage_by_role`` totals
  divided by its ``records``) or given as numbers;
- the **server**: one replica's decode throughput (completion tokens/s summed over every sequence
  in its batch) and prefill throughput (prompt tokens/s), which you measure on your hardware;
- the **client**: aidsafe's CPU time per model call, by default the figure ``bench/overhead.py``
  measured (``bench/results.json``).

Formulas, per input prompt (a replica is one ``vllm serve`` process, on one GPU group)::

    gpu_s          = completion_tokens / decode_tps + prompt_tokens * (1 - prefix_cached_share) / prefill_tps
    per_replica_h  = 3600 / gpu_s                                  # prompts per hour per replica
    replicas       = ceil(target_prompts / (target_hours * per_replica_h))
    calls_per_s    = replicas * per_replica_h * calls_per_prompt / 3600   # the fleet at full speed
    client_cores   = ceil(calls_per_s * cpu_ms_per_call / 1000 * headroom)

Decode and prefill are added as if they took turns on the GPU (vLLM's chunked prefill overlaps
them, so this leans pessimistic). ``prefix_cached_share`` is the share of prompt tokens the
server's prefix cache serves (0 by default: no credit taken). With ``--stream-tps`` (the decode
speed one sequence sees at that batch size) it also gives, by Little's law, how many prompts must
be in flight to keep the fleet busy: ``prompts_per_s * completion_tokens / stream_tps`` (the calls
of one prompt run one after another, so this is also about the calls in flight; a lower bound: it
leaves out prefill and queueing).

Usage::

    python bench/capacity.py --summary out.jsonl --decode-tps 2000 --prefill-tps 20000
    python bench/capacity.py --role intent=1,800,150 --role initializer=1,900,600 ... --decode-tps ... --json
    python bench/capacity.py --calls 6 --prompt-tokens 9600 --completion-tokens 3550 --decode-tps ... --prefill-tps ...

Standard library only, so it runs anywhere (a GPU host without aidsafe installed too).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CapacityError",
    "RoleLoad",
    "Server",
    "Workload",
    "capacity",
    "format_table",
    "load_summary",
    "main",
    "measured_cpu_ms_per_call",
    "parse_role",
    "workload_from_numbers",
    "workload_from_summary",
]

RESULTS = Path(__file__).resolve().parent / "results.json"
"""The benchmark results this script reads its default client CPU per call from."""


class CapacityError(ValueError):
    """Bad input: a missing or malformed sidecar, a negative rate, a share outside [0, 1)."""


@dataclass(frozen=True)
class RoleLoad:
    """What one role costs per input prompt (averaged over the records)."""

    calls: float
    prompt_tokens: float
    completion_tokens: float


@dataclass(frozen=True)
class Workload:
    """Per-prompt cost of a run, by role, and where the numbers came from."""

    roles: dict[str, RoleLoad]
    source: str
    records: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def calls(self) -> float:
        return sum(r.calls for r in self.roles.values())

    @property
    def prompt_tokens(self) -> float:
        return sum(r.prompt_tokens for r in self.roles.values())

    @property
    def completion_tokens(self) -> float:
        return sum(r.completion_tokens for r in self.roles.values())


@dataclass(frozen=True)
class Server:
    """One replica's throughput, summed over its batch, in tokens per second."""

    decode_tps: float
    prefill_tps: float
    prefix_cached_share: float = 0.0

    def __post_init__(self) -> None:
        _positive("decode_tps", self.decode_tps)
        _positive("prefill_tps", self.prefill_tps)
        share = self.prefix_cached_share
        if not _is_number(share) or not 0.0 <= share < 1.0:
            raise CapacityError(f"prefix_cached_share must be in [0, 1), got {share!r}")


# --- input ------------------------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _positive(name: str, x: Any) -> float:
    if not _is_number(x) or x <= 0:
        raise CapacityError(f"{name} must be a positive number, got {x!r}")
    return float(x)


def _non_negative(name: str, x: Any) -> float:
    if not _is_number(x) or x < 0:
        raise CapacityError(f"{name} must be a number >= 0, got {x!r}")
    return float(x)


def load_summary(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Read a run's summary sidecar; ``path`` may be the sidecar or the output it belongs to."""
    p = Path(path)
    if not p.name.endswith(".summary.json"):
        sidecar = p.with_name(p.name + ".summary.json")
        if sidecar.is_file():
            p = sidecar
        elif not p.is_file():
            raise CapacityError(f"{path}: no such file, and no {sidecar.name} beside it")
        elif p.suffix == ".jsonl":
            raise CapacityError(f"{path}: an output without its summary sidecar {sidecar.name} (aidsafe writes it at the end of a run)")
    if not p.is_file():
        raise CapacityError(f"{p}: no such file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CapacityError(f"{p}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise CapacityError(f"{p}: expected a JSON object (a run summary), got {type(data).__name__}")
    return data, p


def workload_from_summary(summary: Mapping[str, Any], source: str = "summary") -> Workload:
    """Per-prompt calls and tokens by role: a summary's ``usage_by_role`` totals ÷ its ``records``.

    Every record counts, failed ones too: a failed prompt spent its calls, and capacity is per input
    prompt. Falls back to ``usage_by_stage`` when the summary has no roles.
    """
    records = summary.get("records")
    if not isinstance(records, int) or isinstance(records, bool) or records <= 0:
        raise CapacityError(f"{source}: 'records' must be a positive integer, got {records!r}")
    by_role = summary.get("usage_by_role") or summary.get("usage_by_stage")
    if not isinstance(by_role, dict) or not by_role:
        raise CapacityError(f"{source}: no 'usage_by_role' (or 'usage_by_stage') with per-role token counts")
    roles: dict[str, RoleLoad] = {}
    cached = retries = 0.0
    for role, usage in by_role.items():
        if not isinstance(usage, dict):
            raise CapacityError(f"{source}: usage_by_role.{role}: expected an object, got {usage!r}")
        values = {}
        for key in ("calls", "prompt_tokens", "completion_tokens"):
            if key not in usage:
                raise CapacityError(f"{source}: usage_by_role.{role}: '{key}' is missing")
            values[key] = _non_negative(f"{source}: usage_by_role.{role}.{key}", usage[key])
        cached += _non_negative(f"{source}: usage_by_role.{role}.cached", usage.get("cached", 0))
        retries += _non_negative(f"{source}: usage_by_role.{role}.retries", usage.get("retries", 0))
        roles[str(role)] = RoleLoad(values["calls"] / records, values["prompt_tokens"] / records, values["completion_tokens"] / records)
    if sum(r.calls for r in roles.values()) <= 0:
        raise CapacityError(f"{source}: the summary counts no model calls")
    notes = []
    failed = summary.get("failed")
    if _is_number(failed) and failed > 0:
        notes.append(f"{int(failed)} of {records} records failed; their calls are counted (they were paid for)")
    if cached > 0:
        notes.append(f"{int(cached)} calls were answered from the response cache (a resumed run): their tokens are counted though no server spent them")
    if retries > 0:
        notes.append(f"{int(retries)} retries are not in the call counts (a retried call is counted once)")
    if summary.get("complete") is False:
        notes.append("the summary is marked incomplete (a run still going, or one that stopped)")
    config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    models = config.get("models") if isinstance(config, dict) else None
    if isinstance(models, dict) and any(str(m).startswith("fake:") for m in models.values()):
        notes.append("fake backend: its token counts are whitespace-split words of scripted replies, not a real model's tokens")
    if isinstance(models, dict) and any(str(m).startswith("local:") for m in models.values()):
        notes.append("embedded (local) model: prompt tokens are real for these templates in its tokenizer, "
                     "but its replies are a small model's, much shorter than a Mixtral-class model's")
    return Workload(roles, source, records, notes)


def workload_from_numbers(calls: float, prompt_tokens: float, completion_tokens: float, source: str = "given numbers") -> Workload:
    """A workload from per-prompt totals (one pseudo-role, ``all``)."""
    _positive("calls per prompt", calls)
    _non_negative("prompt tokens per prompt", prompt_tokens)
    _non_negative("completion tokens per prompt", completion_tokens)
    if prompt_tokens + completion_tokens <= 0:
        raise CapacityError("a prompt must cost some tokens: prompt and completion tokens are both 0")
    return Workload({"all": RoleLoad(float(calls), float(prompt_tokens), float(completion_tokens))}, source)


def parse_role(text: str) -> tuple[str, RoleLoad]:
    """``NAME=CALLS,PROMPT_TOKENS,COMPLETION_TOKENS`` (all per input prompt) → (name, load)."""
    name, sep, rest = text.partition("=")
    parts = rest.split(",")
    if not sep or not name.strip() or len(parts) != 3:
        raise CapacityError(f"--role {text!r}: expected NAME=CALLS,PROMPT_TOKENS,COMPLETION_TOKENS per prompt, e.g. intent=1,800,150")
    try:
        calls, prompt, completion = (float(p) for p in parts)
    except ValueError:
        raise CapacityError(f"--role {text!r}: CALLS, PROMPT_TOKENS and COMPLETION_TOKENS must be numbers") from None
    for label, value in (("CALLS", calls), ("PROMPT_TOKENS", prompt), ("COMPLETION_TOKENS", completion)):
        _non_negative(f"--role {name.strip()}: {label}", value)
    return name.strip(), RoleLoad(calls, prompt, completion)


def measured_cpu_ms_per_call(results: str | Path = RESULTS) -> tuple[float, str]:
    """aidsafe's client CPU per model call from ``bench/results.json`` (``overhead``), with where it came from."""
    p = Path(results)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        bench = data["benchmarks"]["overhead"]
        value = bench["median"]["aidsafe_cpu_ms_per_call"]
    except FileNotFoundError:
        raise CapacityError(f"{p}: not found; give --cpu-ms-per-call") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CapacityError(f"{p}: no benchmarks.overhead.median.aidsafe_cpu_ms_per_call; give --cpu-ms-per-call") from None
    value = _positive(f"{p}: aidsafe_cpu_ms_per_call", value)
    machine = bench.get("machine", {}) if isinstance(bench, dict) else {}
    params = bench.get("params", {}) if isinstance(bench, dict) else {}
    where = (f"measured by bench/overhead.py ({machine.get('date', '?')[:10]}, {machine.get('cores', '?')} cores, "
             f"concurrency {params.get('concurrency', '?')}, median of {bench.get('repeats', '?')})")
    return value, where


# --- the model --------------------------------------------------------------------------


def capacity(workload: Workload, server: Server, *, cpu_ms_per_call: float, target_prompts: float, target_hours: float,
             headroom: float = 2.0, stream_tps: float | None = None) -> dict[str, Any]:
    """The figures of the module docstring's formulas, as a dict (JSON-ready)."""
    _positive("cpu_ms_per_call", cpu_ms_per_call)
    _positive("target_prompts", target_prompts)
    _positive("target_hours", target_hours)
    if not _is_number(headroom) or headroom < 1:
        raise CapacityError(f"headroom must be a number >= 1, got {headroom!r}")
    if stream_tps is not None:
        _positive("stream_tps", stream_tps)
    calls, prompt, completion = workload.calls, workload.prompt_tokens, workload.completion_tokens
    if calls <= 0 or prompt + completion <= 0:
        raise CapacityError("the workload costs nothing: no calls or no tokens per prompt")

    decode_s = completion / server.decode_tps
    prefill_s = prompt * (1.0 - server.prefix_cached_share) / server.prefill_tps
    gpu_s = decode_s + prefill_s
    per_replica_h = 3600.0 / gpu_s
    needed_per_h = target_prompts / target_hours
    exact = needed_per_h / per_replica_h
    replicas = max(1, math.ceil(exact - 1e-9))
    fleet_per_h = replicas * per_replica_h
    fleet_calls_s = fleet_per_h * calls / 3600.0
    target_calls_s = needed_per_h * calls / 3600.0
    cores_exact = fleet_calls_s * cpu_ms_per_call / 1000.0 * headroom
    out: dict[str, Any] = {
        "workload": {
            "source": workload.source,
            "records": workload.records,
            "by_role": {name: asdict(load) for name, load in workload.roles.items()},
            "calls_per_prompt": calls,
            "prompt_tokens_per_prompt": prompt,
            "completion_tokens_per_prompt": completion,
            "notes": list(workload.notes),
        },
        "server": asdict(server),
        "gpu_seconds_per_prompt": gpu_s,
        "decode_seconds_per_prompt": decode_s,
        "prefill_seconds_per_prompt": prefill_s,
        "prompts_per_hour_per_replica": per_replica_h,
        "target": {"prompts": target_prompts, "hours": target_hours, "prompts_per_hour": needed_per_h},
        "replicas_exact": exact,
        "replicas_needed": replicas,
        "hours_for_target_on_replicas": target_prompts / fleet_per_h,
        "calls_per_s_at_target": target_calls_s,
        "calls_per_s_fleet": fleet_calls_s,
        "client": {"cpu_ms_per_call": cpu_ms_per_call, "headroom": headroom},
        "client_cores_exact": cores_exact,
        "client_cores_needed": max(1, math.ceil(cores_exact - 1e-9)),
    }
    if stream_tps is not None:
        latency = completion / stream_tps
        in_flight = fleet_per_h / 3600.0 * latency
        out["stream_tps"] = stream_tps
        out["seconds_per_prompt_alone"] = latency
        out["prompts_in_flight_needed"] = in_flight
        out["calls_in_flight_per_replica"] = in_flight / replicas
    return out


# --- output -----------------------------------------------------------------------------


def _n(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text table of a :func:`capacity` result."""
    w = result["workload"]
    s = result["server"]
    t = result["target"]
    c = result["client"]
    head = f"workload: {w['source']}" + (f" ({w['records']} records)" if w.get("records") else "")
    lines = [head, "", f"  {'per input prompt':<22}{'calls':>8}{'prompt tok':>13}{'completion tok':>16}"]
    for name, load in w["by_role"].items():
        lines.append(f"  {name:<22}{load['calls']:>8.2f}{_n(load['prompt_tokens']):>13}{_n(load['completion_tokens']):>16}")
    if len(w["by_role"]) > 1:
        lines.append(f"  {'total':<22}{w['calls_per_prompt']:>8.2f}{_n(w['prompt_tokens_per_prompt']):>13}{_n(w['completion_tokens_per_prompt']):>16}")
    lines += [
        "",
        f"server, per replica: decode {_n(s['decode_tps'])} tok/s, prefill {_n(s['prefill_tps'])} tok/s, "
        f"prefix-cached share of prompt tokens {100 * s['prefix_cached_share']:.0f}%",
        f"  GPU seconds per prompt            {result['gpu_seconds_per_prompt']:.2f}  "
        f"(decode {result['decode_seconds_per_prompt']:.2f} + prefill {result['prefill_seconds_per_prompt']:.2f})",
        f"  prompts per hour per replica      {_n(result['prompts_per_hour_per_replica'])}",
        f"target: {_n(t['prompts'])} prompts in {t['hours']:g} h = {_n(t['prompts_per_hour'])} prompts/h",
        f"  replicas needed                   {result['replicas_needed']}  ({result['replicas_exact']:.2f} before rounding up; "
        f"the target takes {result['hours_for_target_on_replicas']:.1f} h on {result['replicas_needed']})",
        f"client: {c['cpu_ms_per_call']:.2f} ms CPU per model call, headroom x{c['headroom']:g}",
        f"  calls/s, fleet at full speed      {result['calls_per_s_fleet']:.1f}  (at the target rate: {result['calls_per_s_at_target']:.1f})",
        f"  client cores needed               {result['client_cores_needed']}  ({result['client_cores_exact']:.2f} before rounding up; "
        "one aidsafe process uses about one core: run that many --shard I/N)",
    ]
    if "prompts_in_flight_needed" in result:
        lines += [
            f"latency, one sequence decoding at {_n(result['stream_tps'])} tok/s:",
            f"  seconds per prompt alone          {result['seconds_per_prompt_alone']:.1f}  (its calls one after another; prefill and queueing left out)",
            f"  prompts in flight to keep busy    {result['prompts_in_flight_needed']:.0f}  "
            f"(--concurrency; about {result['calls_in_flight_per_replica']:.0f} calls in flight per replica: --max-num-seqs at least that)",
        ]
    for note in w.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/capacity.py",
        description="Replicas and client cores for an aidsafe run on vLLM, from tokens per prompt and the server's throughput.",
        epilog="The throughputs are yours to measure; the workload should come from a real run's summary sidecar.",
    )
    w = p.add_argument_group("workload (one of)")
    w.add_argument("--summary", metavar="PATH", help="a run's OUT.jsonl.summary.json (or OUT.jsonl, whose sidecar is read)")
    w.add_argument("--role", action="append", metavar="NAME=CALLS,PROMPT,COMPLETION", default=[],
                   help="per-prompt calls and tokens of one role (repeatable)")
    w.add_argument("--calls", type=float, help="model calls per prompt (with --prompt-tokens and --completion-tokens)")
    w.add_argument("--prompt-tokens", type=float, help="prompt tokens per prompt, all calls together")
    w.add_argument("--completion-tokens", type=float, help="completion tokens per prompt, all calls together")
    s = p.add_argument_group("server, per replica")
    s.add_argument("--decode-tps", type=float, required=True, help="completion tokens/s one replica produces, summed over its batch")
    s.add_argument("--prefill-tps", type=float, required=True, help="prompt tokens/s one replica processes")
    s.add_argument("--prefix-cached-share", type=float, default=0.0, help="share of prompt tokens served by the prefix cache (default 0)")
    s.add_argument("--stream-tps", type=float, help="decode tokens/s one sequence sees at that batch size (optional: concurrency)")
    c = p.add_argument_group("client and target")
    c.add_argument("--cpu-ms-per-call", type=float, help="aidsafe's client CPU per call (default: bench/results.json's overhead figure)")
    c.add_argument("--results", default=str(RESULTS), help="benchmark results to read the CPU figure from (default: %(default)s)")
    c.add_argument("--headroom", type=float, default=2.0, help="factor on client CPU (default 2)")
    c.add_argument("--target-prompts", type=float, default=100_000, help="prompts to generate (default 100000)")
    c.add_argument("--target-hours", type=float, default=24.0, help="in this many hours (default 24)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    return p


def _workload(args: argparse.Namespace) -> Workload:
    totals = (args.calls, args.prompt_tokens, args.completion_tokens)
    given = [bool(args.summary), bool(args.role), any(v is not None for v in totals)]
    if sum(given) != 1:
        raise CapacityError("give the workload one way: --summary PATH, or --role ... (repeatable), or --calls with --prompt-tokens and --completion-tokens")
    if args.summary:
        data, path = load_summary(args.summary)
        return workload_from_summary(data, source=str(path))
    if args.role:
        roles: dict[str, RoleLoad] = {}
        for text in args.role:
            name, load = parse_role(text)
            if name in roles:
                raise CapacityError(f"--role {name} is given twice")
            roles[name] = load
        return Workload(roles, "--role numbers (assumptions unless you measured them)")
    if any(v is None for v in totals):
        raise CapacityError("--calls, --prompt-tokens and --completion-tokens go together")
    calls, prompt, completion = totals
    assert calls is not None and prompt is not None and completion is not None
    return workload_from_numbers(calls, prompt, completion, source="given totals (assumptions unless you measured them)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        workload = _workload(args)
        server = Server(args.decode_tps, args.prefill_tps, args.prefix_cached_share)
        if args.cpu_ms_per_call is not None:
            cpu, where = args.cpu_ms_per_call, "given"
        else:
            cpu, where = measured_cpu_ms_per_call(args.results)
        result = capacity(workload, server, cpu_ms_per_call=cpu, target_prompts=args.target_prompts,
                          target_hours=args.target_hours, headroom=args.headroom, stream_tps=args.stream_tps)
    except CapacityError as exc:
        print(f"capacity: error: {exc}", file=sys.stderr)
        return 2
    result["client"]["cpu_ms_per_call_source"] = where
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
        print(f"client CPU per call: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
