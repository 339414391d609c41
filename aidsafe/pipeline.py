"""The library API: run the AIDSAFE recipe on prompts, the same way the CLI and notebooks do.

>>> pipe = Pipeline(graph="aidsafe", policies="aidsafe5")          # embedded local model
>>> record = pipe.run_one("How do I pick a lock?")
>>> summary = pipe.generate("prompts.jsonl", "out.jsonl")
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import AidsafeError, ConfigError
from .graph.compiler import Binding, CompiledAidsafe, ModelFactory, compile_graph
from .graph.state import PromptState, initial_state
from .inputs import PromptItem, count_prompts, read_prompts
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
    stop = "error" if error else (state.get("stop_reason") or ("no_loop" if not has_loop else "budget"))
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
            "removed_thoughts": state.get("removed") or [] if not error else [],
            "response": state.get("response", "") if not error else "",
            "models": compiled.models,
            "usage": state.get("usage") or {},
            "status": "failed" if error else "ok",
            "error": error,
            "faults": state.get("faults") or [],
        }
    )


@dataclass
class RunSummary:
    """Totals of one run."""

    output: str | None = None
    ok: int = 0
    failed: int = 0
    stop_reasons: Counter[str] = field(default_factory=Counter)
    rounds: int = 0
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    faults: int = 0

    def add(self, record: Record) -> None:
        if record.status == "ok":
            self.ok += 1
        else:
            self.failed += 1
        self.stop_reasons[record.stop_reason] += 1
        self.rounds += record.rounds
        self.faults += len(record.faults)
        for stage, usage in record.usage.items():
            slot = self.usage.setdefault(stage, {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0})
            for key, value in usage.model_dump().items():
                slot[key] += value

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "records": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "stop_reasons": dict(self.stop_reasons),
            "mean_rounds": round(self.rounds / self.total, 3) if self.total else 0.0,
            "faults": self.faults,
            "usage": self.usage,
        }

    def __str__(self) -> str:
        d = self.as_dict()
        stops = ", ".join(f"{k} {v}" for k, v in sorted(d["stop_reasons"].items())) or "none"
        tokens = ", ".join(f"{k} {v['prompt_tokens']}+{v['completion_tokens']}" for k, v in d["usage"].items()) or "none"
        return (
            f"records: {d['records']} (ok {d['ok']}, failed {d['failed']}); stop reasons: {stops}; "
            f"mean rounds: {d['mean_rounds']}; faults: {d['faults']}; tokens (prompt+completion) by stage: {tokens}"
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
            final["error"] = {"stage": "graph", "message": f"{type(exc).__name__}: {exc}", "raw": None}
        return record_from_state(final, self.compiled)

    def run_one(self, prompt: str, prompt_id: str | None = None) -> Record:
        """Sync :meth:`arun_one` (works in notebooks too)."""
        return _run_sync(lambda: self._closing(self.arun_one(prompt, prompt_id)))

    async def arun(self, items: Iterable[PromptItem | str], *, concurrency: int = 1) -> AsyncIterator[Record]:
        """Yield records as prompts finish, with at most ``concurrency`` prompts in flight."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        pending: set[asyncio.Task[Record]] = set()
        for index, item in enumerate(items):
            if isinstance(item, str):
                item = PromptItem(id=str(index), prompt=item, source="<api>", line=index + 1)
            pending.add(asyncio.create_task(self.arun_one(item)))
            if len(pending) >= concurrency:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                yield task.result()

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
        progress: bool = True,
    ) -> RunSummary:
        """Read prompts from a file, write one JSON line per prompt to ``output_path``.

        The input is validated completely before the first model call. Each record is written
        and flushed as its prompt finishes.
        """
        output = Path(output_path)
        if output.exists() and output.stat().st_size > 0 and not overwrite:
            raise AidsafeError(f"{output} exists and is not empty; pass --overwrite to replace it")
        total = count_prompts(input_path, prompt_field=prompt_field, id_field=id_field, limit=limit)
        summary = RunSummary(output=str(output))
        output.parent.mkdir(parents=True, exist_ok=True)
        bar = _progress(total, progress)
        try:
            with output.open("w", encoding="utf-8") as sink:
                items = read_prompts(input_path, prompt_field=prompt_field, id_field=id_field, limit=limit)
                async for record in self.arun(items, concurrency=concurrency):
                    sink.write(json.dumps(record.model_dump(mode="json"), ensure_ascii=False) + "\n")
                    sink.flush()
                    summary.add(record)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(ok=summary.ok, failed=summary.failed, refresh=False)
        finally:
            if bar is not None:
                bar.close()
            await self.compiled.aclose()
        return summary

    def generate(self, input_path: str | Path, output_path: str | Path, **options: Any) -> RunSummary:
        """Sync :meth:`agenerate`."""
        return _run_sync(lambda: self.agenerate(input_path, output_path, **options))


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="prompt", desc="generate", dynamic_ncols=True)
