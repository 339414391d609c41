"""The library API: run the AIDSAFE recipe on prompts, the same way the CLI and notebooks do.

>>> pipe = Pipeline(graph="aidsafe", policies="aidsafe5")          # embedded local model
>>> record = pipe.run_one("How do I pick a lock?")
>>> summary = pipe.generate("prompts.jsonl", "out.jsonl")
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ._concurrency import bounded
from .cache import ResponseCache
from .errors import AidsafeError, ConfigError, InputError
from .graph.compiler import Binding, CompiledAidsafe, ModelFactory, compile_graph
from .graph.state import PromptState, initial_state
from .inputs import PromptItem, read_prompts, report_problems
from .outputs import OUTPUT_FORMATS, OutputState, convert_output, drop_records, scan_output, write_sidecar
from .models import ModelSettings, make_model
from .policies import PolicySet
from .records import Record

__all__ = ["Pipeline", "RunSummary", "record_from_state"]

T = TypeVar("T")


def record_from_state(state: PromptState, compiled: CompiledAidsafe) -> Record:
    """Turn the final graph state of one prompt into its output record."""
    error = state.get("error")
    refined = state.get("refined")
    thoughts = refined if refined is not None else state.get("thoughts") or []
    has_loop = any(n.loop is not None for n in compiled.spec.nodes.values())
    if error:
        stop = "agent_refusal" if error.get("kind") == "agent_refusal" else "error"
    else:
        stop = state.get("stop_reason") or ("no_loop" if not has_loop else "budget")
    return Record.model_validate(
        {
            "id": state["id"],
            "prompt": state["prompt"],
            "graph": compiled.spec.name,
            "policy_set": compiled.policies.ref(),
            "intents": state.get("intents") or {},
            "deliberation": state.get("deliberation") or [],
            "stop_reason": stop,
            "rounds": state.get("rounds", 0),
            "thoughts": thoughts if not error else [],
            "removed_thoughts": (state.get("removed") or []) if not error else [],
            "response": state.get("response", "") if not error else "",
            "models": compiled.models,
            "usage": state.get("usage") or {},
            "status": "failed" if error else "ok",
            "error": error,
            "faults": state.get("faults") or [],
        }
    )


_COUNTS = ("prompt_tokens", "completion_tokens", "calls", "retries", "cached")


def _add(slot: dict[str, int], usage: Any) -> None:
    for key in _COUNTS:
        slot[key] = slot.get(key, 0) + int(getattr(usage, key))


@dataclass
class RunSummary:
    """Totals over the records of an output file (every record, after a resume too)."""

    output: str | None = None
    ok: int = 0
    failed: int = 0
    stop_reasons: Counter[str] = field(default_factory=Counter)
    rounds: int = 0
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    """Tokens, calls, retries and cache hits per stage (graph node)."""
    by_role: dict[str, dict[str, int]] = field(default_factory=dict)
    """Tokens per role; deliberation turns counted per agent."""
    faults: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    """Failed records by error kind (model_error, invalid_reply, agent_refusal, graph_error)."""
    run: dict[str, Any] = field(default_factory=dict)
    """What this invocation did: prompts run, skipped (resumed), seconds, rates, cache hits."""

    def add(self, record: Record, roles: dict[str, str] | None = None) -> None:
        """Count one record; ``roles`` maps step-node ids to their role names."""
        if record.status == "ok":
            self.ok += 1
        else:
            self.failed += 1
            self.failures[record.error.kind if record.error else "graph_error"] += 1
        self.stop_reasons[record.stop_reason] += 1
        self.rounds += record.rounds
        self.faults += len(record.faults)
        for stage, usage in record.usage.items():
            _add(self.usage.setdefault(stage, {}), usage)
            if roles and stage in roles:
                _add(self.by_role.setdefault(roles[stage], {}), usage)
        for turn in record.deliberation:
            _add(self.by_role.setdefault(turn.agent, {}), turn.usage)

    @property
    def total(self) -> int:
        return self.ok + self.failed

    @property
    def retries(self) -> int:
        return sum(u.get("retries", 0) for u in self.usage.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "records": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "stop_reasons": dict(self.stop_reasons),
            "failures": dict(self.failures),
            "mean_rounds": round(self.rounds / self.total, 3) if self.total else 0.0,
            "faults": self.faults,
            "retries": self.retries,
            "usage_by_stage": self.usage,
            "usage_by_role": self.by_role,
            "run": self.run,
        }

    def __str__(self) -> str:
        d = self.as_dict()
        stops = ", ".join(f"{k} {v}" for k, v in sorted(d["stop_reasons"].items())) or "none"
        tokens = ", ".join(f"{k} {v['prompt_tokens']}+{v['completion_tokens']}" for k, v in d["usage_by_stage"].items()) or "none"
        run = d["run"]
        this_run = (
            f"; this run: {run.get('prompts', 0)} prompts in {run.get('seconds', 0):.1f} s, {run.get('skipped', 0)} already done"
            if run
            else ""
        )
        return (
            f"records: {d['records']} (ok {d['ok']}, failed {d['failed']}); stop reasons: {stops}; "
            f"mean rounds: {d['mean_rounds']}; faults: {d['faults']}; retries: {d['retries']}; "
            f"tokens (prompt+completion) by stage: {tokens}{this_run}"
        )


def _run_sync(factory: Callable[[], Any]) -> Any:
    """Run a coroutine from sync code, also inside a running loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Pipeline:
    """A compiled graph plus policies and models: what ``aidsafe generate`` runs."""

    def __init__(
        self,
        graph: str | Path = "aidsafe",
        policies: str | Path | PolicySet = "aidsafe5",
        settings: ModelSettings | None = None,
        *,
        role_models: dict[str, str] | None = None,
        model_factory: ModelFactory = make_model,
    ) -> None:
        self.settings = settings or ModelSettings()
        self.compiled = compile_graph(graph, policies, self.settings, role_models=role_models, model_factory=model_factory)

    # -- inspection (no model calls) ----------------------------------------------------------

    def mermaid(self) -> str:
        """The compiled graph as Mermaid text."""
        return self.compiled.mermaid()

    def roles(self) -> list[str]:
        """Role and agent names that :meth:`messages` accepts."""
        return list(self.compiled.bindings)

    def messages(self, role: str, prompt: str, **state: Any) -> list[dict[str, str]]:
        """The exact chat messages ``role`` would send for ``prompt``, without calling a model.

        ``state`` may set ``intents``, ``thoughts``, ``response``, ``round`` ...; missing values
        get placeholders so every template renders.
        """
        binding = self.binding(role)
        base = initial_state("preview", prompt)
        base["intents"] = state.pop("intents", {"explicit": ["(explicit intents appear here)"], "implicit": ["(implicit intents appear here)"]})
        base["thoughts"] = state.pop("thoughts", [{"text": "(thoughts so far appear here)", "policies": [self.compiled.policies.ids[0]]}])
        base["response"] = state.pop("response", "(the current response appears here)")
        loop = next((n.loop for n in self.compiled.spec.nodes.values() if n.loop is not None), None)
        extra = {"agent": binding.name, "round": 1, "max_rounds": loop.max_rounds if loop else 1} if binding.kind == "deliberation" else {}
        extra.update(state)
        return binding.template.render(self.compiled.variables(base, schema=binding.schema, **extra))

    def binding(self, role: str) -> Binding:
        """The binding (template, schema, model settings) of a role or agent name."""
        bindings = self.compiled.bindings
        if role in bindings:
            return bindings[role]
        matches = [b for key, b in bindings.items() if key.split(".")[-1] == role or b.role == role]
        if not matches:
            raise ConfigError(f"no role or agent {role!r} in graph {self.compiled.spec.name!r}; choose from {', '.join(bindings)}")
        return matches[0]

    # -- running ------------------------------------------------------------------------------

    async def arun_one(self, prompt: str | PromptItem, prompt_id: str | None = None) -> Record:
        """Run one prompt through the graph; a failure comes back as a ``failed`` record."""
        item = prompt if isinstance(prompt, PromptItem) else PromptItem(id=prompt_id or "0", prompt=prompt, source="<api>", line=0)
        state = initial_state(item.id, item.prompt)
        try:
            final = await self.compiled.graph.ainvoke(state, config={"recursion_limit": self.compiled.recursion_limit})
        except Exception as exc:  # a bug or a LangGraph error must not lose the prompt
            final = dict(state)
            final["error"] = {"stage": "graph", "kind": "graph_error", "message": f"{type(exc).__name__}: {exc}", "raw": None}
        return record_from_state(final, self.compiled)

    def run_one(self, prompt: str, prompt_id: str | None = None) -> Record:
        """Sync :meth:`arun_one` (works in notebooks too)."""
        return _run_sync(lambda: self._closing(self.arun_one(prompt, prompt_id)))

    async def arun(
        self, items: Iterable[PromptItem | str], *, concurrency: int = 1, on_start: Callable[[], None] | None = None
    ) -> AsyncIterator[Record]:
        """Yield records as prompts finish, with at most ``concurrency`` prompts in flight.

        ``items`` is consumed lazily: memory stays flat in the number of prompts.
        """
        def as_item(index_item: tuple[int, PromptItem | str]) -> PromptItem:
            index, item = index_item
            return item if isinstance(item, PromptItem) else PromptItem(id=str(index), prompt=item, source="<api>", line=index + 1)

        async for record in bounded((as_item(x) for x in enumerate(items)), self.arun_one, concurrency, on_start):
            yield record

    def run(self, prompts: Iterable[str | PromptItem], *, concurrency: int = 1) -> list[Record]:
        """Run prompts and return their records (small batches; use :meth:`generate` for files)."""

        async def collect() -> list[Record]:
            return [r async for r in self.arun(prompts, concurrency=concurrency)]

        return _run_sync(lambda: self._closing(collect()))

    async def _closing(self, coro: Any) -> Any:
        try:
            return await coro
        finally:
            await self.compiled.aclose()

    def summarize(self, output_path: str | Path) -> RunSummary:
        """Totals over every record of an output file (streamed: memory stays flat)."""
        roles = {node_id: n.role for node_id, n in self.compiled.spec.nodes.items() if n.role is not None}
        summary = RunSummary(output=str(output_path))
        with open(output_path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    summary.add(Record.model_validate_json(line), roles)
        return summary

    async def agenerate(
        self,
        input_path: str | Path,
        output_path: str | Path,
        *,
        prompt_field: str = "prompt",
        id_field: str = "id",
        limit: int | None = None,
        concurrency: int = 1,
        overwrite: bool = False,
        retry_failed: bool = False,
        shard: tuple[int, int] | None = None,
        output_format: str = "jsonl",
        cache: bool = True,
        progress: bool = True,
        lenient: bool = False,
    ) -> RunSummary:
        """Run every prompt of a file; one JSON record per prompt, appended as each finishes.

        - The input is validated completely before the first model call. With ``lenient``,
          bad lines are skipped instead (printed once to stderr as ``file:line: field: message``,
          at most 20) and counted in ``summary.run["skipped_input_lines"]``; file-level
          problems still refuse the file.
        - Re-running the same command resumes: prompts with a record are skipped, a truncated
          last line left by a crash is cut off, and calls a killed run already made are answered
          from the response cache (``<output>.cache.sqlite``) instead of the model.
        - ``retry_failed`` runs the prompts whose records failed again (their old records are
          replaced). ``overwrite`` starts from scratch. ``shard=(i, n)`` runs every n-th prompt
          starting at i (0-based), for several machines; ``aidsafe merge`` joins the shards.
        - ``output_format`` ``parquet`` or ``hf`` converts the finished JSONL (kept as
          ``<output>.jsonl``, where resumes happen) to Parquet or a ``save_to_disk`` folder.
        - A ``<output>.summary.json`` sidecar holds the totals.
        """
        if output_format not in OUTPUT_FORMATS:
            raise AidsafeError(f"unknown output format {output_format!r}; choose {', '.join(OUTPUT_FORMATS)}")
        if concurrency < 1:
            raise AidsafeError("concurrency must be at least 1")
        if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
            raise AidsafeError(f"shard must be i/n with 0 <= i < n, got {shard[0]}/{shard[1]}")
        destination = Path(output_path)
        records_path = destination if output_format == "jsonl" else destination.with_name(destination.name + ".jsonl")
        cache_path = records_path.with_name(records_path.name + ".cache.sqlite")
        state = OutputState() if overwrite else scan_output(records_path, repair=True)
        skip = state.done if retry_failed else state.done | state.failed
        problems: list[InputError] = []

        def selected(problems: list[InputError] | None = None) -> Iterator[PromptItem]:
            items = read_prompts(input_path, prompt_field=prompt_field, id_field=id_field, limit=limit, lenient=lenient, problems=problems)
            for index, item in enumerate(items):
                if shard is not None and index % shard[1] != shard[0]:
                    continue
                if item.id not in skip:
                    yield item

        # one pass validates the whole input (a bad file is refused before any model call, before
        # --overwrite deletes anything and before any record is written) and counts what is left
        # to do, for the progress bar
        todo = sum(1 for _ in selected(problems))
        report_problems(problems)
        if overwrite:
            for stale in (records_path, cache_path, Path(f"{cache_path}-wal"), Path(f"{cache_path}-shm")):
                stale.unlink(missing_ok=True)
        if retry_failed and state.failed:
            drop_records(records_path, state.failed)
        records_path.parent.mkdir(parents=True, exist_ok=True)
        response_cache = ResponseCache(cache_path, read=not retry_failed) if cache else None
        self.compiled.cache = response_cache
        meter = _Meter(todo, progress)
        started = time.monotonic()
        try:
            with records_path.open("a", encoding="utf-8") as sink:
                async for record in self.arun(selected(), concurrency=concurrency, on_start=meter.started):
                    sink.write(json.dumps(record.model_dump(mode="json"), ensure_ascii=False) + "\n")
                    sink.flush()
                    meter.finished(record)
        finally:
            meter.close()
            self.compiled.cache = None
            if response_cache is not None:
                response_cache.close()
            await self.compiled.aclose()
        summary = self.summarize(records_path)
        seconds = time.monotonic() - started
        summary.run = {
            "prompts": meter.done,
            "skipped": len(skip),
            "repaired_last_line": state.repaired,
            "seconds": round(seconds, 3),
            "prompts_per_s": round(meter.done / seconds, 3) if seconds else 0.0,
            "tokens_per_s": round(meter.tokens / seconds, 1) if seconds else 0.0,
            "cache_hits": response_cache.hits if response_cache is not None else 0,
            "shard": f"{shard[0]}/{shard[1]}" if shard else None,
            "skipped_input_lines": len(problems),
        }
        if output_format != "jsonl":
            convert_output(records_path, output_format, destination)
        write_sidecar(destination, summary.as_dict())
        return summary

    def generate(self, input_path: str | Path, output_path: str | Path, **options: Any) -> RunSummary:
        """Sync :meth:`agenerate`."""
        return _run_sync(lambda: self.agenerate(input_path, output_path, **options))


class _Meter:
    """Progress bar: done, failed, in flight, prompts/s, tokens/s, ETA."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.done = self.failed = self.in_flight = self.tokens = 0
        self.started_at = time.monotonic()
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="prompt", desc="generate", dynamic_ncols=True)

    def started(self) -> None:
        self.in_flight += 1

    def finished(self, record: Record) -> None:
        self.in_flight -= 1
        self.done += 1
        self.failed += record.status == "failed"
        self.tokens += sum(u.prompt_tokens + u.completion_tokens for u in record.usage.values())
        if self.bar is not None:
            elapsed = max(time.monotonic() - self.started_at, 1e-9)
            self.bar.set_postfix(
                ok=self.done - self.failed, failed=self.failed, in_flight=self.in_flight,
                tok_s=f"{self.tokens / elapsed:.0f}", refresh=False,
            )
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
