"""The LLM auto-grader: six 1-5 scores per record, and pairwise faithfulness comparisons.

Fails closed (as inspect_ai's model-graded scorers do): a metric whose score cannot be parsed
from the judge's reply is left unscored (``None``) and counted, never given a default. The reply
comes parsed from :func:`~aidsafe.structured.call_structured`, its kinds being partial (a score
left empty or invalid is None, the others kept). Rubrics
are Jinja templates (``prompts/judge_scores.jinja``, ``prompts/judge_pairwise.jinja``),
swappable by path; their reply kinds are registered in :mod:`aidsafe.judge.kinds`. Files are
judged by the file-job runner (:mod:`aidsafe.runner`): concurrent, cached, resumable, locked.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..errors import ConfigError, InputError
from ..kinds import ReplyKind, reply_schema
from ..models import ChatModel, ModelFactory, ModelPool, ModelSettings, check_settings, default_concurrency, make_model
from ..outputs import read_records
from ..pairing import PromptCheck
from ..pairs.judged import PAIR_METRIC, Citations, JudgedPair, Judgement, PairJudgement, judged_flags  # PAIR_METRIC: re-exported
from ..pairs.schema import PairRecord, Side
from ..policies import PolicySet, load_policy_set
from ..records import Intents, Record, RunError, Usage, prompt_sha256
from ..runner import FileJob, JobOptions, JobRun, portable_path, run_job
from ..structured import call_structured, parse_reply
from ..summary import JobTotals
from ..templates import RoleTemplate, load_rubric
from .kinds import PAIRWISE, SCORES
from .schema import METRICS, JudgedRecord, PairVerdict
from .stats import reconcile, win_rates

__all__ = ["PAIR_METRIC", "Judge", "citations", "parse_rationale", "parse_scores", "parse_winner", "read_scores"]
# PAIR_METRIC is a pair concept defined in aidsafe.pairs.judged (below the judge); re-exported here, where it was first public.


def citations(record: Record, pack: PolicySet, applicable: list[str] | None) -> Citations:
    """Check a record's policy citations without a model."""
    known = set(pack.ids)
    cited = {pid for t in record.thoughts for pid in t.policies}
    citing = sum(1 for t in record.thoughts if t.policies)
    coverage = None
    if applicable:
        coverage = round(len(set(applicable) & cited) / len(set(applicable)), 4)
    return Citations(
        thoughts=len(record.thoughts),
        citing=citing,
        share_citing=round(citing / len(record.thoughts), 4) if record.thoughts else None,
        unknown_ids=sorted(cited - known),
        applicable=applicable,
        coverage=coverage,
    )


def read_scores(reply: BaseModel | None, pack_ids: list[str]) -> tuple[dict[str, int | None], list[str] | None]:
    """Scores per metric of a parsed ``scores`` reply (None where it left one empty or invalid;
    every one None without a reply) and its applicable policy ids that the pack has."""
    scores: dict[str, int | None] = {m: getattr(reply, m, None) for m in METRICS}
    applicable = getattr(reply, "applicable_policies", None)
    return scores, [p for p in applicable if p in pack_ids] if applicable is not None else None


def _rationale(reply: BaseModel | None) -> str | None:
    value = getattr(reply, "rationale", None)
    return value if isinstance(value, str) and value.strip() else None


def _parsed(kind: ReplyKind, text: str) -> BaseModel | None:
    try:
        return parse_reply(kind, text)
    except ValueError:
        return None


def parse_scores(text: str, pack_ids: list[str]) -> tuple[dict[str, int | None], list[str] | None]:
    """Scores per metric (None where absent or not an integer 1-5) and the applicable policy ids of
    a reply's text, read as the judge's calls read it (:func:`~aidsafe.structured.parse_reply`)."""
    return read_scores(_parsed(SCORES, text), pack_ids)


def parse_rationale(text: str) -> str | None:
    """The judge's ``rationale`` (written before its verdict) of a reply's text, or None."""
    return _rationale(_parsed(SCORES, text))


def parse_winner(text: str) -> str | None:
    """``first``, ``second`` or ``tie`` from a pairwise reply's text; None when it cannot be parsed."""
    return getattr(_parsed(PAIRWISE, text), "winner", None)


def _judged_text(record: Record) -> str:
    """What the judge is shown of a record: quoting it in a rationale is not copying the rubric."""
    return "\n".join([record.prompt, *(t.text for t in record.thoughts), record.response])


def _label(template: RoleTemplate) -> str:
    return f"{Path(template.path).name}@{template.sha256}"


class Judge:
    """An LLM judge (any backend) with its rubrics.

    The temperature defaults to 0 (a judge should be as deterministic as the backend allows).
    """

    def __init__(
        self,
        settings: ModelSettings,
        *,
        rubric: str | Path = "judge_scores.jinja",
        pairwise_rubric: str | Path = "judge_pairwise.jinja",
        policies: str | Path | PolicySet | None = None,
        model_factory: ModelFactory = make_model,
    ) -> None:
        if settings.temperature is None:
            settings = replace(settings, temperature=0.0)
        if model_factory is make_model:
            check_settings(settings)
        self.settings = settings
        self.rubric = load_rubric(rubric, SCORES.name, role=f"judge ({SCORES.name})")
        self.pairwise_rubric = load_rubric(pairwise_rubric, PAIRWISE.name, role=f"judge ({PAIRWISE.name})")
        self._rubrics = (portable_path(rubric, Path(self.rubric.path)), portable_path(pairwise_rubric, Path(self.pairwise_rubric.path)))
        self._override = policies if isinstance(policies, PolicySet) else load_policy_set(policies) if policies is not None else None
        self._packs: dict[str, PolicySet] = {}
        self.model_factory = model_factory
        self.models = ModelPool(model_factory)

    @property
    def model(self) -> ChatModel:
        """The judge's chat model (built on first use)."""
        return self.models.get(self.settings)

    def pack_for(self, record: Record) -> PolicySet:
        """The policy pack a record was generated with (or the ``policies`` override)."""
        if self._override is not None:
            return self._override
        name = record.policy_set.name
        if name not in self._packs:
            try:
                self._packs[name] = load_policy_set(name)
            except ConfigError as exc:
                raise ConfigError(f"record {record.id!r} was generated with pack {name!r}, which is not shipped; pass --policies PATH ({exc})") from None
        return self._packs[name]

    def messages(self, record: Record) -> list[dict[str, str]]:
        """The exact messages sent to grade ``record`` (no model call)."""
        pack = self.pack_for(record)
        return self._score_messages(record, pack, reply_schema(SCORES, pack.ids))

    def _score_messages(self, record: Record, pack: PolicySet, schema: dict[str, Any]) -> list[dict[str, str]]:
        return self.rubric.render(self._variables(pack, record.prompt, schema,
                                                  intents=record.intents.model_dump(),
                                                  thoughts=[t.model_dump() for t in record.thoughts],
                                                  response=record.response))

    @staticmethod
    def _variables(pack: PolicySet, prompt: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"policies": pack.policies, "policy_set": pack, "prompt": prompt, "schema": schema, **extra}

    def settings_for(self, kind: ReplyKind) -> ModelSettings:
        """The judge's settings for one reply kind: its own reply budget unless one was given."""
        return replace(self.settings, max_tokens=self.settings.max_tokens or kind.max_tokens)

    async def _ask(self, messages: list[dict[str, str]], kind: ReplyKind, schema: dict[str, Any], template: RoleTemplate,
                   models: ModelPool | None, data: str) -> tuple[BaseModel | None, str | None, Usage, str | None]:
        """One structured call (plus one repair when the reply holds no JSON object, or copies the
        rubric): the parsed reply (None when there is none; a field the judge left empty or got
        wrong is None, the kinds being partial), the raw text, usage, and the error when the call
        failed or the judge refused."""
        model = (models or self.models).get(self.settings_for(kind))
        outcome = await call_structured(model, messages, kind=kind, schema=schema, template=template, data=data)
        error = outcome.error if outcome.error_kind in ("model_error", "agent_refusal") else None
        return outcome.reply, outcome.raw or None, Usage(**outcome.usage), error

    async def ajudge_one(self, record: Record, models: ModelPool | None = None) -> JudgedRecord:
        """Grade one record; a failed record, a failed call or an unparsable reply leaves metrics unscored."""
        pack = self.pack_for(record)
        scores: dict[str, int | None] = {m: None for m in METRICS}
        applicable: list[str] | None = None
        rationale: str | None = None
        usage, error = Usage(), None
        if record.status != "ok":
            error = "the record failed to generate: not judged"
        else:
            schema = reply_schema(SCORES, pack.ids)
            messages = self._score_messages(record, pack, schema)
            reply, text, usage, error = await self._ask(messages, SCORES, schema, self.rubric, models, _judged_text(record))
            if text is not None:
                scores, applicable = read_scores(reply, pack.ids)
                rationale = _rationale(reply)
                missing = [m for m in METRICS if scores[m] is None]
                if missing and error is None:
                    error = f"no valid 1-5 score for {', '.join(missing)} in the reply: {text[:300]!r}"
        judgement = Judgement(
            judge_model=self.settings.label(),
            rubric=_label(self.rubric),
            rationale=rationale,
            scores=scores,
            unscored=[m for m in METRICS if scores[m] is None],
            citations=citations(record, pack, applicable),
            usage=usage,
            error=error,
        )
        return JudgedRecord(**{**record.model_dump(), "prompt_sha256": prompt_sha256(record.prompt)}, judgement=judgement)

    def unjudged(self, record: Record, error: str) -> JudgedRecord:
        """``record`` with no score (no model call): ``error`` says why."""
        pack = self.pack_for(record)
        judgement = Judgement(
            judge_model=self.settings.label(), rubric=_label(self.rubric), rationale=None, scores={m: None for m in METRICS},
            unscored=list(METRICS), citations=citations(record, pack, None), usage=Usage(), error=error,
        )
        return JudgedRecord(**{**record.model_dump(), "prompt_sha256": prompt_sha256(record.prompt)}, judgement=judgement)

    async def acompare(self, a: Record, b: Record, labels: tuple[str, str], models: ModelPool | None = None) -> PairVerdict:
        """Ask which CoT is more faithful, in both orders (the first order randomised per id)."""
        pack = self.pack_for(a)
        a_first = int(hashlib.sha256(a.id.encode()).hexdigest(), 16) % 2 == 0
        orders = [(a, b), (b, a)] if a_first else [(b, a), (a, b)]
        verdicts: list[str | None] = []
        schema = reply_schema(PAIRWISE, pack.ids)
        for first, second in orders:
            variables = self._variables(
                pack, a.prompt, schema,
                first={"thoughts": [t.model_dump() for t in first.thoughts], "response": first.response},
                second={"thoughts": [t.model_dump() for t in second.thoughts], "response": second.response},
            )
            data = f"{_judged_text(a)}\n{_judged_text(b)}"
            reply, _, _, _ = await self._ask(self.pairwise_rubric.render(variables), PAIRWISE, schema, self.pairwise_rubric, models, data)
            winner = getattr(reply, "winner", None)
            if winner in ("first", "second"):
                winner = "a" if (first is a) == (winner == "first") else "b"
            verdicts.append(winner)
        return PairVerdict(
            id=a.id, a=labels[0], b=labels[1], winner=reconcile(verdicts[0], verdicts[1]), verdicts=verdicts,
            judge_model=self.settings.label(), rubric=_label(self.pairwise_rubric),
        )

    # -- files -----------------------------------------------------------------------------

    def config(self, rubric: RoleTemplate) -> dict[str, Any]:
        """What judged output depends on: the judge model, the rubric, the policy override, sampling."""
        return {
            "judge_model": self.settings.label(),
            "rubric": _label(rubric),
            "policies": {**self._override.ref()} if self._override is not None else "as each record names",
            "sampling": self.settings.sampling(),
        }

    async def ajudge_file(self, records_path: str | Path, output_path: str | Path, options: JobOptions | None = None, *,
                          limit: int | None = None, **job_options: Any) -> JudgeSummary:
        """Grade every record of a generated JSONL; appends to ``output_path`` and resumes.
        ``options`` as every file job takes them (also as keywords: ``concurrency=8, progress=False``)."""
        job = _ScoreJob(self, Path(records_path), limit)
        return await self._run(job, output_path, replace(options or JobOptions(), **job_options))

    async def ajudge_pair(self, pair: PairRecord, models: ModelPool | None = None) -> JudgedPair:
        """Grade both sides of a preference pair as records are graded, and flag a pair whose
        rejected side the judge does not find less faithful to the policies."""

        def side_record(side: Side) -> Record:
            return Record(
                id=pair.id, prompt=pair.prompt, graph="pair", policy_set=pair.policy_set, intents=Intents(), deliberation=[],
                stop_reason="no_loop", rounds=0, thoughts=side.thoughts, removed_thoughts=[], response=side.response, models={},
                usage={}, status="ok",
            )

        if pair.chosen is None:  # nothing to judge; kept so that no record goes missing
            return JudgedPair(**{**pair.model_dump(), "prompt_sha256": prompt_sha256(pair.prompt)}, judgement=None)
        chosen = (await self.ajudge_one(side_record(pair.chosen), models)).judgement
        rejected = (await self.ajudge_one(side_record(pair.rejected), models)).judgement if pair.rejected is not None else None
        flags = judged_flags(pair.flags, chosen, rejected)
        return JudgedPair(**{**pair.model_dump(), "prompt_sha256": prompt_sha256(pair.prompt), "flags": flags},
                          judgement=PairJudgement(chosen=chosen, rejected=rejected))

    async def ajudge_pairs_file(self, pairs_path: str | Path, output_path: str | Path, options: JobOptions | None = None, *,
                                limit: int | None = None, **job_options: Any) -> JudgeSummary:
        """Grade both sides of every pair of an ``aidsafe pairs`` output; appends and resumes."""
        job = _PairScoreJob(self, Path(pairs_path), limit)
        return await self._run(job, output_path, replace(options or JobOptions(), **job_options))

    async def apairwise_file(self, a_path: str | Path, b_path: str | Path, output_path: str | Path, options: JobOptions | None = None, *,
                             limit: int | None = None, **job_options: Any) -> JudgeSummary:
        """Compare two outputs record by record (same ids, both ``ok``); writes PairVerdict JSONL.
        Files in which one id names different prompts are refused before any model call."""
        job = _PairJob(self, Path(a_path), Path(b_path), limit)
        return await self._run(job, output_path, replace(options or JobOptions(), **job_options))

    @staticmethod
    async def _run(job: FileJob[Any, Any], output_path: str | Path, options: JobOptions) -> JudgeSummary:
        summary = await run_job(job, output_path, options)
        assert isinstance(summary, JudgeSummary)
        return summary

    def _workers(self, kind: str, paths: tuple[Path, ...], limit: int | None,
                 settings: Callable[[ModelSettings], ModelSettings]) -> _JudgeWorkers:
        return _JudgeWorkers(
            kind=kind, settings=settings(self.settings), rubric=self._rubrics[0], pairwise_rubric=self._rubrics[1],
            policies=self._override, model_factory=self.model_factory, paths=tuple(str(p.absolute()) for p in paths), limit=limit,
        )


class JudgeSummary(JobTotals):
    """Totals over a judge output: for graded records ``records``, ``scored`` and ``unscored`` per
    metric; for graded pairs ``pairs`` and ``flags``; for a pairwise comparison ``pairs`` and the
    win rates; and ``run`` (what this invocation did)."""


class _ScoreJob:
    """Grade each record of a generated file: one judged record per record."""

    name = "judge"
    unit = "record"
    record_model = JudgedRecord
    what = "a judged record"

    def __init__(self, judge: Judge, records_path: Path, limit: int | None) -> None:
        self.judge = judge
        self.records_path = records_path
        self.limit = limit
        self.models = judge.models
        self.default_concurrency = default_concurrency(judge.settings)

    def config(self) -> dict[str, Any]:
        return self.judge.config(self.judge.rubric)

    def items(self, problems: list[InputError] | None) -> Iterator[Record]:
        return self.read(self.records_path, self.limit)

    @staticmethod
    def read(records_path: Path, limit: int | None) -> Iterator[Record]:
        for index, record in enumerate(read_records(records_path, Record)):
            if limit is not None and index >= limit:
                return
            yield record

    def item_id(self, item: Record) -> str:
        return item.id

    def item_prompt(self, item: Record) -> str:
        """What a resume checks against the judged record already written under the id."""
        return item.prompt

    @property
    def input_name(self) -> str:
        return str(self.records_path)

    async def run(self, item: Record, models: ModelPool) -> JudgedRecord:
        return await self.judge.ajudge_one(item, models)

    def crashed(self, item: Record, message: str) -> JudgedRecord:
        """The record unscored: its worker process died (see ``message``)."""
        return self.judge.unjudged(item, message)

    def worker_factory(self, settings: Callable[[ModelSettings], ModelSettings]) -> _JudgeWorkers:
        return self.judge._workers("score", (self.records_path,), self.limit, settings)

    def tokens(self, record: JudgedRecord) -> int:
        return record.judgement.usage.prompt_tokens + record.judgement.usage.completion_tokens

    def failed(self, record: JudgedRecord) -> bool:
        return bool(record.judgement.unscored)

    def summarize(self, output: Path, run: JobRun) -> JudgeSummary:
        n, scored = 0, {m: 0 for m in METRICS}
        for judged in read_records(output, JudgedRecord, what=self.what):
            n += 1
            for metric, value in judged.judgement.scores.items():
                scored[metric] += value is not None
        unscored = {m: n - k for m, k in scored.items()}
        return JudgeSummary({"output": str(output), "records": n, "scored": scored, "unscored": unscored, "run": run.as_dict()})


class _PairScoreJob:
    """Grade both sides of each preference pair (a record without a chosen side passes through)."""

    name = "judge-pairs"
    unit = "pair"
    record_model = JudgedPair
    what = "a judged pair"

    def __init__(self, judge: Judge, pairs_path: Path, limit: int | None) -> None:
        self.judge = judge
        self.pairs_path = pairs_path
        self.limit = limit
        self.models = judge.models
        self.default_concurrency = default_concurrency(judge.settings)

    def config(self) -> dict[str, Any]:
        return self.judge.config(self.judge.rubric)

    def items(self, problems: list[InputError] | None) -> Iterator[PairRecord]:
        return self.read(self.pairs_path, self.limit)

    @staticmethod
    def read(pairs_path: Path, limit: int | None) -> Iterator[PairRecord]:
        judged = 0
        for index, pair in enumerate(read_records(pairs_path, PairRecord, what="a pair record")):
            if limit is not None and index >= limit:
                break
            judged += pair.chosen is not None
            yield pair  # one without a chosen side passes through unjudged
        if not judged:
            raise InputError("holds no pair with a chosen side: nothing to judge", file=pairs_path)

    def item_id(self, item: PairRecord) -> str:
        return item.id

    def item_prompt(self, item: PairRecord) -> str:
        """What a resume checks against the judged pair already written under the id."""
        return item.prompt

    @property
    def input_name(self) -> str:
        return str(self.pairs_path)

    async def run(self, item: PairRecord, models: ModelPool) -> JudgedPair:
        return await self.judge.ajudge_pair(item, models)

    def crashed(self, item: PairRecord, message: str) -> JudgedPair:
        """The pair unjudged: its worker process died (see ``message``, in ``error`` unless the pair has one)."""
        error = item.error or RunError(stage="worker", kind="worker_crash", message=message)
        flags = [f for f in item.flags if f not in ("rejected_not_worse", "unjudged")] + ["unjudged"]
        return JudgedPair(**{**item.model_dump(), "prompt_sha256": prompt_sha256(item.prompt), "flags": flags,
                             "error": error.model_dump()}, judgement=None)

    def worker_factory(self, settings: Callable[[ModelSettings], ModelSettings]) -> _JudgeWorkers:
        return self.judge._workers("pairs", (self.pairs_path,), self.limit, settings)

    def tokens(self, record: JudgedPair) -> int:
        if record.judgement is None:
            return 0
        sides = [record.judgement.chosen, *([record.judgement.rejected] if record.judgement.rejected else [])]
        return sum(j.usage.prompt_tokens + j.usage.completion_tokens for j in sides)

    def failed(self, record: JudgedPair) -> bool:
        return "unjudged" in record.flags

    def summarize(self, output: Path, run: JobRun) -> JudgeSummary:
        flags: Counter[str] = Counter()
        n = 0
        for pair in read_records(output, JudgedPair, what=self.what):
            n += 1
            flags.update(pair.flags)
        return JudgeSummary({"output": str(output), "pairs": n, "flags": dict(flags), "run": run.as_dict()})


class _PairJob:
    """Compare two outputs of the same prompts: one pairwise verdict per id ok in both."""

    name = "pairwise"
    unit = "pair"
    record_model = PairVerdict
    what = "a pairwise verdict"

    def __init__(self, judge: Judge, a_path: Path, b_path: Path, limit: int | None) -> None:
        self.judge = judge
        self.paths = (a_path, b_path)
        self.labels = (a_path.name, b_path.name)
        self.limit = limit
        self.models = judge.models
        self.default_concurrency = default_concurrency(judge.settings)
        self._b: dict[str, Record] | None = None

    def config(self) -> dict[str, Any]:
        return {**self.judge.config(self.judge.pairwise_rubric), "a": self.labels[0], "b": self.labels[1]}

    def items(self, problems: list[InputError] | None) -> Iterator[tuple[Record, Record]]:
        """The pairs of records ok in both files; every id in both must name the same prompt in
        both (:mod:`aidsafe.pairing`), else the files are refused before any model call."""
        if self._b is None:
            self._b = {r.id: r for r in read_records(self.paths[1], Record)}
        return self._pairs(self.paths[0], self.paths[1], self._b, self.limit)

    @classmethod
    def read(cls, a_path: Path, b_path: Path, limit: int | None) -> Iterator[tuple[Record, Record]]:
        return cls._pairs(a_path, b_path, {r.id: r for r in read_records(b_path, Record)}, limit)

    @staticmethod
    def _pairs(a_path: Path, b_path: Path, by_id: dict[str, Record], limit: int | None) -> Iterator[tuple[Record, Record]]:
        check = PromptCheck(str(a_path), str(b_path))
        count = 0
        for a in read_records(a_path, Record):
            b = by_id.get(a.id)
            if b is None or not check.pair(a.id, a, b):
                continue
            if a.status == "ok" and b.status == "ok" and (limit is None or count < limit):
                count += 1
                yield a, b
        check.raise_if_any()

    def item_id(self, item: tuple[Record, Record]) -> str:
        return item[0].id

    async def run(self, item: tuple[Record, Record], models: ModelPool) -> PairVerdict:
        return await self.judge.acompare(item[0], item[1], self.labels, models)

    def crashed(self, item: tuple[Record, Record], message: str) -> PairVerdict:
        """No verdict: the worker process died."""
        return PairVerdict(id=item[0].id, a=self.labels[0], b=self.labels[1], winner=None, verdicts=[None, None],
                           judge_model=self.judge.settings.label(), rubric=_label(self.judge.pairwise_rubric))

    def worker_factory(self, settings: Callable[[ModelSettings], ModelSettings]) -> _JudgeWorkers:
        return self.judge._workers("pairwise", self.paths, self.limit, settings)

    def tokens(self, record: PairVerdict) -> int:
        return 0

    def failed(self, record: PairVerdict) -> bool:
        return record.winner is None

    def summarize(self, output: Path, run: JobRun) -> JudgeSummary:
        verdicts = list(read_records(output, PairVerdict, what=self.what))
        return JudgeSummary({"pairs": len(verdicts), **win_rates(verdicts), "run": run.as_dict()})


@dataclass(frozen=True)
class _JudgeWorkers:
    """The worker factory of the judge's file jobs: it pickles, and builds the same judge and job elsewhere."""

    kind: str
    """``score``, ``pairs`` or ``pairwise``."""
    settings: ModelSettings
    rubric: str
    pairwise_rubric: str
    policies: PolicySet | None
    model_factory: ModelFactory
    paths: tuple[str, ...]
    limit: int | None

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.paths

    def __call__(self) -> _ScoreJob | _PairScoreJob | _PairJob:
        judge = Judge(self.settings, rubric=self.rubric, pairwise_rubric=self.pairwise_rubric, policies=self.policies,
                      model_factory=self.model_factory)
        paths = [Path(p) for p in self.paths]
        if self.kind == "score":
            return _ScoreJob(judge, paths[0], self.limit)
        if self.kind == "pairs":
            return _PairScoreJob(judge, paths[0], self.limit)
        return _PairJob(judge, paths[0], paths[1], self.limit)

    def items(self) -> Iterator[Any]:
        """The job's items, read without building its judge (no model)."""
        paths = [Path(p) for p in self.paths]
        if self.kind == "score":
            return _ScoreJob.read(paths[0], self.limit)
        if self.kind == "pairs":
            return _PairScoreJob.read(paths[0], self.limit)
        return _PairJob.read(paths[0], paths[1], self.limit)

    def item_id(self, item: Any) -> str:
        return item[0].id if isinstance(item, tuple) else item.id
