"""``aidsafe pairs``: the ear-whisperer over a generation output, one preference pair per prompt.

For each ``ok`` generation record the ear-whisperer graph (``graphs/ear_whisperer.yaml``) runs on
its prompt; when the safety scorer finds the target's answer violating, that answer is the
rejected side and the record's refined chain of thought and response the chosen side, which the
scorer then classifies too (a chosen side found unsafe flags the pair). Every try is kept. The
file job runner gives it what ``generate`` has: concurrency, exactly-once resume, the response
cache, the remembered configuration, one live run per output.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ..graph.compiler import CompiledAidsafe, compile_graph
from ..graph.nodes import template_variables
from ..graph.state import initial_state
from ..kinds.whisper import SAFETY_VERDICT, p_unsafe
from ..models import ModelFactory, ModelPool, ModelSettings, default_concurrency, make_model
from ..outputs import read_records
from ..policies import PolicySet
from ..records import Record, RunError, Usage, prompt_sha256, training_thoughts
from ..runner import JobOptions, JobRun, portable_path, run_job
from ..structured import call_structured
from ..summary import JobTotals
from .schema import PairRecord, Side, Try, Verdict

__all__ = ["PairMaker", "PairsSummary", "pack_of"]


def pack_of(records_path: str | Path) -> str:
    """The policy pack the ok records of a generation output were written with (one for all)."""
    names = Counter(record.policy_set.name for record in read_records(records_path, Record) if record.status == "ok")
    if not names:
        raise InputError("holds no ok generation record: nothing to pair (generate first, or --retry-failed)", file=records_path)
    if len(names) > 1:
        raise InputError(f"mixes records of several policy packs ({', '.join(sorted(names))}): pair one pack at a time", file=records_path)
    return next(iter(names))


class PairsSummary(JobTotals):
    """Totals over a pairs output: records, pairs, no_pair, failed, stop_reasons, flags, mean_tries, run."""


class PairMaker:
    """The ear-whisperer graph, compiled with a policy pack and models, and the pairs it makes."""

    def __init__(
        self,
        policies: str | Path | PolicySet,
        settings: ModelSettings | None = None,
        *,
        graph: str | Path = "ear_whisperer",
        role_models: dict[str, str] | None = None,
        model_factory: ModelFactory = make_model,
    ) -> None:
        self.settings = settings or ModelSettings()
        self.role_models = dict(role_models or {})
        self.model_factory = model_factory
        self.compiled: CompiledAidsafe = compile_graph(graph, policies, self.settings, role_models=role_models, model_factory=model_factory)
        self.graph = portable_path(graph, self.compiled.path)
        """The graph as another process (a Ray actor) loads it."""
        scorers = [b for b in self.compiled.bindings.values() if b.kind is SAFETY_VERDICT]
        if not scorers or not any(b.kind.stops for b in self.compiled.bindings.values()):
            raise ConfigError(
                f"graph {self.compiled.spec.name!r} has no role that replies 'safety_verdict': it cannot tell a violating answer",
                file=self.compiled.path,
            )
        self.scorer = scorers[0]

    def _base(self, record: Record) -> dict[str, Any]:
        return {
            "id": record.id,
            "prompt": record.prompt,
            "prompt_sha256": prompt_sha256(record.prompt),
            "policy_set": self.compiled.policies.ref(),
            "source": {"graph": record.graph},
            "models": self.compiled.models,
        }

    def crashed(self, record: Record, message: str) -> PairRecord:
        """The failed pair record of a generation record whose worker process died (``error.kind: worker_crash``)."""
        error = RunError(stage="worker", kind="worker_crash", message=message)
        return PairRecord(**self._base(record), status="failed", stop_reason="error", error=error)

    async def apair_one(self, record: Record, models: ModelPool | None = None) -> PairRecord:
        """The pair for one generation record (or why there is none); never raises for a model failure."""
        base = self._base(record)
        if record.status != "ok":
            return PairRecord(**base, status="no_pair", stop_reason="skipped", reason="the generation record failed: no chosen side")
        if not training_thoughts(record.thoughts):
            return PairRecord(**base, status="no_pair", stop_reason="skipped", reason="the generation record has no chain of thought (superseded thoughts do not count)")
        chosen = Side(thoughts=training_thoughts(record.thoughts), response=record.response)  # never a superseded thought
        state = initial_state(record.id, record.prompt)
        try:
            final = await self.compiled.graph.ainvoke(
                state, config={"recursion_limit": self.compiled.recursion_limit}, context=self.compiled.context(models)
            )
        except Exception as exc:  # a bug or a LangGraph error must not lose the prompt
            error = RunError(stage="graph", kind="graph_error", message=f"{type(exc).__name__}: {exc}")
            return PairRecord(**base, status="failed", stop_reason="error", chosen=chosen, error=error)
        tries = [Try.model_validate(t) for t in (final.get("data") or {}).get("tries") or []]
        usage: dict[str, Usage] = {stage: Usage(**counts) for stage, counts in (final.get("usage") or {}).items()}
        if final.get("error"):
            failure = RunError.model_validate(final.get("error"))
            stop = "agent_refusal" if failure.kind == "agent_refusal" else "error"
            return PairRecord(**base, status="failed", stop_reason=stop, chosen=chosen, tries=tries, usage=usage, error=failure)
        if final.get("stop_reason") != "violation":
            reason = f"no belief led the target to a violation in {final.get('rounds', 0)} round(s)"
            return PairRecord(**base, status="no_pair", stop_reason="budget", reason=reason, chosen=chosen, tries=tries, usage=usage)
        verdict, scored = await self._score(record.prompt, chosen, models)
        usage["score_chosen"] = scored
        last = tries[-1]
        no_verdict = RunError(stage="score_chosen", kind="invalid_reply", message="the scorer gave no verdict on the chosen side")
        return PairRecord(
            **base,
            status="ok" if verdict is not None else "failed",
            stop_reason="violation",
            chosen=chosen,
            chosen_verdict=verdict,
            rejected=Side(thoughts=last.thoughts, response=last.response),
            belief=last.belief,
            tries=tries,
            flags=["chosen_unsafe"] if verdict is not None and verdict.verdict == "unsafe" else [],
            usage=usage,
            error=None if verdict is not None else no_verdict,
        )

    async def _score(self, prompt: str, side: Side, models: ModelPool | None) -> tuple[Verdict | None, Usage]:
        """The safety scorer's verdict on one side, as it judges the target's answers."""
        binding = self.scorer
        state = initial_state("chosen", prompt)
        state["data"] = {"attempt": side.model_dump()}
        variables = template_variables(self.compiled.policies, state, schema=binding.schema, **binding.options)
        model = (models or self.compiled.model_pool).get(binding.settings)
        outcome = await call_structured(model, binding.template.render(variables), kind=SAFETY_VERDICT, schema=binding.schema,
                                        template=binding.template, data=prompt)
        if outcome.reply is None:
            return None, Usage(**outcome.usage)
        reply = outcome.reply.model_dump()
        return Verdict(verdict=reply["verdict"], violated=reply["violated"], p_unsafe=p_unsafe(outcome.logprobs)), Usage(**outcome.usage)

    async def apairs_file(self, records_path: str | Path, output_path: str | Path, options: JobOptions | None = None, *,
                          limit: int | None = None, **job_options: Any) -> PairsSummary:
        """Pair every record of a generation output into ``output_path`` (resumable, exactly once).
        ``options`` as every file job takes them (also as keywords: ``concurrency=8, progress=False``)."""
        job = _PairsJob(self, Path(records_path), limit)
        summary = await run_job(job, output_path, dataclasses.replace(options or JobOptions(), **job_options))
        assert isinstance(summary, PairsSummary)
        return summary


class _PairsJob:
    """``aidsafe pairs`` as a file job: one pair record per generation record."""

    name = "pairs"
    unit = "prompt"
    record_model = PairRecord
    what = "a pair record"

    def __init__(self, maker: PairMaker, records_path: Path, limit: int | None) -> None:
        self.maker = maker
        self.records_path = records_path
        self.limit = limit
        self.models = maker.compiled.model_pool
        self.default_concurrency = default_concurrency(maker.settings)

    def config(self) -> dict[str, Any]:
        return {**self.maker.compiled.config(), "chosen_from": self.records_path.name}

    def items(self, problems: list[InputError] | None) -> Iterator[Record]:
        return _read_generation(self.records_path, self.limit)

    def item_id(self, item: Record) -> str:
        return item.id

    def item_prompt(self, item: Record) -> str:
        """What a resume checks against the pair already written under the record's id."""
        return item.prompt

    @property
    def input_name(self) -> str:
        return str(self.records_path)

    async def run(self, item: Record, models: ModelPool) -> PairRecord:
        return await self.maker.apair_one(item, models)

    def crashed(self, item: Record, message: str) -> PairRecord:
        return self.maker.crashed(item, message)

    def worker_factory(self, settings: Callable[[ModelSettings], ModelSettings]) -> _PairsWorkers:
        """This job, rebuilt in another process (with ``settings(model settings)``)."""
        maker = self.maker
        return _PairsWorkers(
            graph=maker.graph, policies=maker.compiled.policies, settings=settings(maker.settings), role_models=maker.role_models,
            model_factory=maker.model_factory, records_path=str(self.records_path.absolute()), limit=self.limit,
        )

    def tokens(self, record: PairRecord) -> int:
        return sum(u.prompt_tokens + u.completion_tokens for u in record.usage.values())

    def failed(self, record: PairRecord) -> bool:
        return record.status == "failed"

    def summarize(self, output: Path, run: JobRun) -> PairsSummary:
        statuses: Counter[str] = Counter()
        stops: Counter[str] = Counter()
        flags: Counter[str] = Counter()
        rounds = 0
        for pair in read_records(output, PairRecord, what=self.what):
            statuses[pair.status] += 1
            stops[pair.stop_reason] += 1
            flags.update(pair.flags)
            rounds += len(pair.tries)
        total = sum(statuses.values())
        return PairsSummary(
            {
                "output": str(output),
                "records": total,
                "pairs": statuses["ok"],
                "no_pair": statuses["no_pair"],
                "failed": statuses["failed"],
                "stop_reasons": dict(stops),
                "flags": dict(flags),
                "mean_tries": round(rounds / total, 3) if total else 0.0,
                "run": run.as_dict(),
            }
        )


def _read_generation(records_path: str | Path, limit: int | None) -> Iterator[Record]:
    """The generation records to pair (at least one usable, else the file is refused)."""
    usable = 0
    for index, record in enumerate(read_records(records_path, Record)):
        if limit is not None and index >= limit:
            break
        usable += record.status == "ok" and bool(training_thoughts(record.thoughts))
        yield record
    if not usable:
        raise InputError("holds no ok generation record with a chain of thought: nothing to pair", file=records_path)


@dataclass(frozen=True)
class _PairsWorkers:
    """The pairs job's worker factory: it pickles, and builds the same whisperer elsewhere."""

    graph: str
    policies: PolicySet
    settings: ModelSettings
    role_models: dict[str, str]
    model_factory: ModelFactory
    records_path: str
    limit: int | None

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.records_path,)

    def __call__(self) -> _PairsJob:
        maker = PairMaker(self.policies, self.settings, graph=self.graph, role_models=self.role_models, model_factory=self.model_factory)
        return _PairsJob(maker, Path(self.records_path), self.limit)

    def items(self) -> Iterator[Record]:
        return _read_generation(self.records_path, self.limit)

    def item_id(self, item: Record) -> str:
        return item.id
