"""The library API: run the AIDSAFE recipe on prompts, the same way the CLI and notebooks do.

>>> pipe = Pipeline(graph="aidsafe", policies="aidsafe5")          # embedded local model
>>> record = pipe.run_one("How do I pick a lock?")
>>> summary = pipe.generate("prompts.jsonl", "out.jsonl")
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._concurrency import bounded, run_sync
from .errors import AidsafeError, ConfigError, InputError
from .graph.binding import Binding
from .graph.compiler import CompiledAidsafe, compile_graph
from .graph.nodes import loop_variables
from .graph.state import PromptState, initial_state
from .inputs import PromptItem, read_prompts, report_problems
from .models import ModelFactory, ModelPool, ModelSettings, default_concurrency, make_model
from .outputs import OUTPUT_FORMATS, convert_output
from .policies import PolicySet
from .records import Record, prompt_sha256
from .runner import JobOptions, JobRun, portable_path, run_job
from .summary import RunSummary, summarize_output

__all__ = ["Pipeline", "RunSummary", "record_from_state"]


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
            "id": state.get("id"),
            "prompt": state.get("prompt"),
            "prompt_sha256": prompt_sha256(state.get("prompt") or ""),
            "graph": compiled.spec.name,
            "policy_set": compiled.policies.ref(),
            "intents": state.get("intents") or {},
            "deliberation": state.get("deliberation") or [],
            "stop_reason": stop,
            "rounds": state.get("rounds", 0),
            "thoughts": thoughts if not error else [],
            "removed_thoughts": (state.get("removed") or []) if not error else [],
            "response": state.get("response", "") if not error else "",
            "seed": state.get("seed"),
            "response_before_refiner": state.get("response_before_refiner") if not error else None,
            "refiner_rewrote_response": state.get("refiner_rewrote_response") if not error else None,
            "models": compiled.models,
            "usage": state.get("usage") or {},
            "status": "failed" if error else "ok",
            "error": error,
            "faults": state.get("faults") or [],
        }
    )


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
        self.role_models = dict(role_models or {})
        self.model_factory = model_factory
        self.compiled = compile_graph(graph, policies, self.settings, role_models=role_models, model_factory=model_factory)
        self.graph = portable_path(graph, self.compiled.path)
        """The graph as another process (a Ray actor, on a node of a shared file system) loads it."""
        if not any(b.kind.name == "draft" for b in self.compiled.bindings.values()):
            raise ConfigError(
                f"graph {self.compiled.spec.name!r} writes no chain of thought (no role replies 'draft'), so it makes no "
                "generation records; the ear-whisperer graph runs with 'aidsafe pairs'",
                file=self.compiled.path,
            )

    @property
    def default_concurrency(self) -> int:
        """Prompts in flight when a caller does not say: 16 against an endpoint, 1 for the local model."""
        return default_concurrency(self.settings)

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
        placeholder = {"text": "(thoughts so far appear here)", "policies": [self.compiled.policies.ids[0]], "by": "seed", "round": 0}
        base["thoughts"] = state.pop("thoughts", [placeholder])
        base["response"] = state.pop("response", "(the current response appears here)")
        loop = next((n.loop for n in self.compiled.spec.nodes.values() if n.loop is not None), None)
        extra = loop_variables(loop, binding.name, 1) if loop is not None and binding.kind.placement == "agent" else {}
        extra.update(state)
        return binding.template.render(self.compiled.variables(base, schema=binding.schema, **{**binding.options, **extra}))

    def binding(self, role: str) -> Binding:
        """The binding (template, schema, model settings) of a role or agent name."""
        bindings = self.compiled.bindings
        if role in bindings:
            return bindings[role]
        plan = self.compiled.plan  # an agent's name or a role's, as the plan records them (no node name is parsed)
        keys = [node.binding.name for node in plan if node.binding is not None and role in (node.agent, node.role)]
        matches = [bindings[key] for key in keys if key in bindings]
        if not matches:
            raise ConfigError(f"no role or agent {role!r} in graph {self.compiled.spec.name!r}; choose from {', '.join(bindings)}")
        return matches[0]

    # -- running ------------------------------------------------------------------------------

    async def arun_one(self, prompt: str | PromptItem, prompt_id: str | None = None, *, models: ModelPool | None = None) -> Record:
        """Run one prompt through the graph; a failure comes back as a ``failed`` record.

        ``models`` (default: the graph's own) answers the calls, e.g. a pool with a response cache.
        """
        item = prompt if isinstance(prompt, PromptItem) else PromptItem(id=prompt_id or "0", prompt=prompt, source="<api>", line=0)
        state = initial_state(item.id, item.prompt)
        try:
            final = await self.compiled.graph.ainvoke(
                state, config={"recursion_limit": self.compiled.recursion_limit}, context=self.compiled.context(models)
            )
        except Exception as exc:  # a bug or a LangGraph error must not lose the prompt
            final = PromptState(**state)
            final["error"] = {"stage": "graph", "kind": "graph_error", "message": f"{type(exc).__name__}: {exc}", "raw": None}
        return record_from_state(final, self.compiled)

    def run_one(self, prompt: str, prompt_id: str | None = None) -> Record:
        """Sync :meth:`arun_one` (works in notebooks too)."""
        return run_sync(lambda: self._closing(self.arun_one(prompt, prompt_id)))

    async def arun(
        self, items: Iterable[PromptItem | str], *, concurrency: int | None = None, on_start: Callable[[], None] | None = None
    ) -> AsyncIterator[Record]:
        """Yield records as prompts finish, with at most ``concurrency`` prompts in flight
        (default: :attr:`default_concurrency`).

        ``items`` is consumed lazily: memory stays flat in the number of prompts.
        """
        def as_item(index_item: tuple[int, PromptItem | str]) -> PromptItem:
            index, item = index_item
            return item if isinstance(item, PromptItem) else PromptItem(id=str(index), prompt=item, source="<api>", line=index + 1)

        limit = self.default_concurrency if concurrency is None else concurrency
        async for record in bounded((as_item(x) for x in enumerate(items)), self.arun_one, limit, on_start):
            yield record

    def run(self, prompts: Iterable[str | PromptItem], *, concurrency: int | None = None) -> list[Record]:
        """Run prompts and return their records (small batches; use :meth:`generate` for files)."""

        async def collect() -> list[Record]:
            return [r async for r in self.arun(prompts, concurrency=concurrency)]

        return run_sync(lambda: self._closing(collect()))

    async def _closing(self, coro: Any) -> Any:
        try:
            return await coro
        finally:
            await self.compiled.aclose()

    def summarize(self, output_path: str | Path) -> RunSummary:
        """Totals over every record of an output file (streamed: memory stays flat)."""
        roles = {node_id: n.role for node_id, n in self.compiled.spec.nodes.items() if n.role is not None}
        return summarize_output(output_path, roles)

    async def agenerate(
        self,
        input_path: str | Path,
        output_path: str | Path,
        options: JobOptions | None = None,
        *,
        prompt_field: str = "prompt",
        id_field: str = "id",
        limit: int | None = None,
        shard: tuple[int, int] | None = None,
        output_format: str = "jsonl",
        lenient: bool = False,
        **job_options: Any,
    ) -> RunSummary:
        """Run every prompt of a file; one JSON record per prompt, appended as each finishes.

        ``options`` (:class:`~aidsafe.runner.JobOptions`) are the options every file job takes
        (concurrency, overwrite, retry_failed, cache, progress, and ``executor``: where the
        prompts run, e.g. :class:`aidsafe.engines.ray_data.RayExecutor`); they may also be given
        as keywords (``concurrency=8, progress=False``).

        The file-job runner (:mod:`aidsafe.runner`) does the rest:

        - The input is validated completely before the first model call. With ``lenient``,
          bad lines are skipped instead (printed once to stderr as ``file:line: field: message``,
          at most 20) and counted in ``summary.run["skipped_input_lines"]``; file-level
          problems still refuse the file.
        - Re-running the same command resumes: prompts with a record are skipped, a truncated
          last line left by a crash is cut off, and calls a killed run already made are answered
          from the response cache (``<output>.cache.sqlite``) instead of the model. The output
          remembers the graph, policy pack, templates, models and sampling settings it was
          written with; resuming with others raises :class:`~aidsafe.errors.ConfigMismatchError`.
          A second run on an output a live run holds raises :class:`~aidsafe.errors.OutputInUseError`.
        - ``retry_failed`` runs the prompts whose records failed again (their old records are
          replaced). ``overwrite`` starts from scratch. ``shard=(i, n)`` runs every n-th prompt
          starting at i (0-based), for several machines; ``aidsafe merge`` joins the shards.
        - ``concurrency`` prompts are in flight (default: 16 against an endpoint, 1 locally).
        - ``output_format`` ``parquet`` or ``hf`` converts the finished JSONL (kept as
          ``<output>.jsonl``, where resumes happen) to Parquet or a ``save_to_disk`` folder.
        - A ``<output>.summary.json`` sidecar holds the totals and the configuration.
        - Ctrl-C raises :class:`~aidsafe.errors.JobInterrupted`: the records written are safe.
        """
        if output_format not in OUTPUT_FORMATS:
            raise AidsafeError(f"unknown output format {output_format!r}; choose {', '.join(OUTPUT_FORMATS)}")
        if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
            raise AidsafeError(f"shard must be i/n with 0 <= i < n, got {shard[0]}/{shard[1]}")
        destination = Path(output_path)
        records_path = destination if output_format == "jsonl" else destination.with_name(destination.name + ".jsonl")
        job = _GenerateJob(self, Path(input_path), prompt_field, id_field, limit, shard, lenient)
        options = dataclasses.replace(options or JobOptions(), **job_options)
        if options.on_input_problems is None:
            options.on_input_problems = report_problems
        summary = await run_job(job, records_path, options, sidecar_of=destination)
        if output_format != "jsonl":
            convert_output(records_path, output_format, destination)
        assert isinstance(summary, RunSummary)
        return summary

    def generate(self, input_path: str | Path, output_path: str | Path, options: JobOptions | None = None, **kwargs: Any) -> RunSummary:
        """Sync :meth:`agenerate`."""
        return run_sync(lambda: self.agenerate(input_path, output_path, options, **kwargs))


class _GenerateJob:
    """``aidsafe generate`` as a file job: one record per input prompt."""

    name = "generate"
    unit = "prompt"
    record_model = Record
    what = "an aidsafe record"

    def __init__(self, pipe: Pipeline, input_path: Path, prompt_field: str, id_field: str, limit: int | None,
                 shard: tuple[int, int] | None, lenient: bool) -> None:
        self.pipe = pipe
        self.input_path = input_path
        self.prompt_field, self.id_field, self.limit, self.lenient = prompt_field, id_field, limit, lenient
        self.shard = shard
        self.models = pipe.compiled.model_pool
        self.default_concurrency = pipe.default_concurrency

    def config(self) -> dict[str, Any]:
        return self.pipe.compiled.config()

    def items(self, problems: list[InputError] | None) -> Iterator[PromptItem]:
        return _read_shard(self.input_path, self.prompt_field, self.id_field, self.limit, self.lenient, self.shard, problems)

    def item_id(self, item: PromptItem) -> str:
        return item.id

    def item_prompt(self, item: PromptItem) -> str:
        """What a resume checks against the record already written under the item's id."""
        return item.prompt

    @property
    def input_name(self) -> str:
        return str(self.input_path)

    async def run(self, item: PromptItem, models: ModelPool) -> Record:
        return await self.pipe.arun_one(item, models=models)

    def tokens(self, record: Record) -> int:
        return sum(u.prompt_tokens + u.completion_tokens for u in record.usage.values())

    def failed(self, record: Record) -> bool:
        return record.status == "failed"

    def summarize(self, output: Path, run: JobRun) -> RunSummary:
        summary = self.pipe.summarize(output)
        run.extra["shard"] = f"{self.shard[0]}/{self.shard[1]}" if self.shard else None
        summary.run = run.as_dict()
        return summary

    def crashed(self, item: PromptItem, message: str) -> Record:
        """The failed record of a prompt whose worker process died (``error.kind: worker_crash``)."""
        state = initial_state(item.id, item.prompt)
        state["error"] = {"stage": "worker", "kind": "worker_crash", "message": message, "raw": None}
        return record_from_state(state, self.pipe.compiled)

    def worker_factory(self, settings: Callable[[ModelSettings], ModelSettings]) -> _GenerateWorkers:
        """This job, rebuilt in another process (with ``settings(model settings)``)."""
        pipe = self.pipe
        return _GenerateWorkers(
            graph=pipe.graph, policies=pipe.compiled.policies, settings=settings(pipe.settings), role_models=pipe.role_models,
            model_factory=pipe.model_factory, input_path=str(self.input_path.absolute()), prompt_field=self.prompt_field,
            id_field=self.id_field, limit=self.limit, lenient=self.lenient, shard=self.shard,
        )


def _read_shard(input_path: str | os.PathLike[str], prompt_field: str, id_field: str, limit: int | None, lenient: bool,
                shard: tuple[int, int] | None, problems: list[InputError] | None) -> Iterator[PromptItem]:
    """The prompts of a file, then the shard (every n-th prompt starting at i)."""
    items = read_prompts(input_path, prompt_field=prompt_field, id_field=id_field, limit=limit, lenient=lenient, problems=problems)
    for index, item in enumerate(items):
        if shard is None or index % shard[1] == shard[0]:
            yield item


@dataclass(frozen=True)
class _GenerateWorkers:
    """The generate job's worker factory: it pickles, and builds the same pipeline elsewhere."""

    graph: str
    policies: PolicySet
    settings: ModelSettings
    role_models: dict[str, str]
    model_factory: ModelFactory
    input_path: str
    prompt_field: str
    id_field: str
    limit: int | None
    lenient: bool
    shard: tuple[int, int] | None

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input_path,)

    def __call__(self) -> _GenerateJob:
        pipe = Pipeline(self.graph, self.policies, self.settings, role_models=self.role_models, model_factory=self.model_factory)
        return _GenerateJob(pipe, Path(self.input_path), self.prompt_field, self.id_field, self.limit, self.shard, self.lenient)

    def items(self) -> Iterator[PromptItem]:
        return _read_shard(self.input_path, self.prompt_field, self.id_field, self.limit, self.lenient, self.shard, None)

    def item_id(self, item: PromptItem) -> str:
        return item.id
