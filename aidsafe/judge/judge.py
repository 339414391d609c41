"""The LLM auto-grader: six 1-5 scores per record, and pairwise faithfulness comparisons.

Fails closed (as inspect_ai's model-graded scorers do): a metric whose score cannot be parsed
from the judge's reply is left unscored (``None``) and counted, never given a default. Rubrics
are Jinja templates (``prompts/judge_scores.jinja``, ``prompts/judge_pairwise.jinja``),
swappable by path. Runs concurrently, caches every reply next to its output and resumes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .._concurrency import bounded
from ..cache import ResponseCache
from ..errors import ConfigError
from ..graph.structured import call_structured
from ..models import ChatModel, ModelSettings, check_settings, make_model
from ..outputs import read_records, scan_output, write_sidecar
from ..policies import PolicySet, load_policy_set
from ..records import Record, Usage
from ..resources import builtin_dir
from ..templates import RoleTemplate, load_template
from .schema import METRICS, Citations, JudgedRecord, Judgement, PairVerdict

__all__ = ["Judge", "citations", "parse_scores", "parse_winner", "read_records"]


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


def _json_object(text: str) -> dict[str, Any] | None:
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(body, strict=False)
    except (json.JSONDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _require_object(text: str) -> dict[str, Any]:
    data = _json_object(text)
    if data is None:
        raise ValueError("not a JSON object")
    return data


def parse_scores(text: str, pack_ids: list[str]) -> tuple[dict[str, int | None], list[str] | None]:
    """Scores per metric (None where absent or not an integer 1-5) and the applicable policy ids."""
    data = _json_object(text) or {}
    scores: dict[str, int | None] = {}
    for metric in METRICS:
        value = data.get(metric)
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5
        scores[metric] = value if ok else None
    applicable = data.get("applicable_policies")
    ids = [p for p in applicable if isinstance(p, str) and p in pack_ids] if isinstance(applicable, list) else None
    return scores, ids


def parse_winner(text: str) -> str | None:
    """``first``, ``second`` or ``tie`` from a pairwise reply; None when it cannot be parsed."""
    data = _json_object(text) or {}
    winner = data.get("winner")
    return winner if winner in ("first", "second", "tie") else None


def _scores_schema(pack_ids: list[str]) -> dict[str, Any]:
    props: dict[str, Any] = {
        "applicable_policies": {"type": "array", "items": {"type": "string", "enum": pack_ids}, "maxItems": len(pack_ids)}
    }
    props.update({m: {"type": "integer", "enum": [1, 2, 3, 4, 5]} for m in METRICS})
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


_PAIR_SCHEMA = {
    "type": "object",
    "properties": {"winner": {"type": "string", "enum": ["first", "second", "tie"]}},
    "required": ["winner"],
    "additionalProperties": False,
}


def _template(name_or_path: str | Path, reply: str) -> RoleTemplate:
    path = Path(name_or_path)
    if not path.is_file():
        shipped = builtin_dir("prompts") / str(name_or_path)
        if not shipped.is_file():
            raise ConfigError(f"rubric template {str(name_or_path)!r} not found (neither a file nor a shipped template)")
        path = shipped
    return load_template(path, reply=reply, role=f"judge ({reply})")


class Judge:
    """An LLM judge (any backend) with its rubrics."""

    def __init__(
        self,
        settings: ModelSettings,
        *,
        rubric: str | Path = "judge_scores.jinja",
        pairwise_rubric: str | Path = "judge_pairwise.jinja",
        policies: str | Path | None = None,
        model_factory: Any = make_model,
    ) -> None:
        if model_factory is make_model:
            check_settings(settings)
        self.settings = settings
        self.rubric = _template(rubric, "scores")
        self.pairwise_rubric = _template(pairwise_rubric, "pairwise")
        self._override = load_policy_set(policies) if policies is not None else None
        self._packs: dict[str, PolicySet] = {}
        self._factory = model_factory
        self._model: ChatModel | None = None
        self.cache: ResponseCache | None = None

    @property
    def model(self) -> ChatModel:
        if self._model is None:
            self._model = self._factory(self.settings)
        return self._model

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
        return self.rubric.render(self._variables(pack, record.prompt, _scores_schema(pack.ids),
                                                  intents=record.intents.model_dump(),
                                                  thoughts=[t.model_dump() for t in record.thoughts],
                                                  response=record.response))

    @staticmethod
    def _variables(pack: PolicySet, prompt: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"policies": pack.policies, "policy_set": pack, "prompt": prompt, "schema": schema, **extra}

    async def _ask(self, messages: list[dict[str, str]], kind: str, schema: dict[str, Any]) -> tuple[str | None, Usage, str | None]:
        """One call (plus one repair when the reply is not a JSON object): raw text, usage, and the
        error when the call failed or the judge refused; scores are parsed from the raw text."""
        outcome = await call_structured(self.model, messages, kind=kind, schema=schema, cache=self.cache, parse=_require_object)
        error = outcome.error if outcome.error_kind in ("model_error", "agent_refusal") else None
        return outcome.raw or None, Usage(**outcome.usage), error

    async def ajudge_one(self, record: Record) -> JudgedRecord:
        """Grade one record; a failed record, a failed call or an unparsable reply leaves metrics unscored."""
        pack = self.pack_for(record)
        label = f"{Path(self.rubric.path).name}@{self.rubric.sha256}"
        scores: dict[str, int | None] = {m: None for m in METRICS}
        applicable: list[str] | None = None
        usage, error = Usage(), None
        if record.status != "ok":
            error = "the record failed to generate: not judged"
        else:
            text, usage, error = await self._ask(self.messages(record), "scores", _scores_schema(pack.ids))
            if text is not None:
                scores, applicable = parse_scores(text, pack.ids)
                missing = [m for m in METRICS if scores[m] is None]
                if missing and error is None:
                    error = f"no valid 1-5 score for {', '.join(missing)} in the reply: {text[:300]!r}"
        judgement = Judgement(
            judge_model=self.settings.label(),
            rubric=label,
            scores=scores,
            unscored=[m for m in METRICS if scores[m] is None],
            citations=citations(record, pack, applicable),
            usage=usage,
            error=error,
        )
        return JudgedRecord(**record.model_dump(), judgement=judgement)

    async def acompare(self, a: Record, b: Record, labels: tuple[str, str]) -> PairVerdict:
        """Ask which CoT is more faithful, in both orders (the first order randomised per id)."""
        from .stats import reconcile

        pack = self.pack_for(a)
        a_first = int(hashlib.sha256(a.id.encode()).hexdigest(), 16) % 2 == 0
        orders = [(a, b), (b, a)] if a_first else [(b, a), (a, b)]
        verdicts: list[str | None] = []
        for first, second in orders:
            variables = self._variables(
                pack, a.prompt, _PAIR_SCHEMA,
                first={"thoughts": [t.model_dump() for t in first.thoughts], "response": first.response},
                second={"thoughts": [t.model_dump() for t in second.thoughts], "response": second.response},
            )
            text, _, _ = await self._ask(self.pairwise_rubric.render(variables), "pairwise", _PAIR_SCHEMA)
            winner = parse_winner(text or "")
            if winner in ("first", "second"):
                winner = "a" if (first is a) == (winner == "first") else "b"
            verdicts.append(winner)
        return PairVerdict(id=a.id, a=labels[0], b=labels[1], winner=reconcile(verdicts[0], verdicts[1]), verdicts=verdicts)

    # -- files -----------------------------------------------------------------------------

    async def _stream(self, items: Iterable[Any], worker: Callable[[Any], Awaitable[BaseModel]], output: Path, *,
                      total: int, desc: str, concurrency: int, cache: bool, progress: bool) -> None:
        """Run ``worker`` over ``items`` concurrently, appending each result to ``output`` as it finishes
        (flushed), with the response cache ``<output>.cache.sqlite`` and a progress bar."""
        self.cache = ResponseCache(output.with_name(output.name + ".cache.sqlite")) if cache else None
        bar = _bar(total, progress, desc)
        try:
            with output.open("a", encoding="utf-8") as sink:
                async for result in bounded(items, worker, concurrency):
                    sink.write(result.model_dump_json() + "\n")
                    sink.flush()
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            if self.cache is not None:
                self.cache.close()
                self.cache = None
            if self._model is not None:
                await self._model.aclose()

    async def ajudge_file(self, records_path: str | Path, output_path: str | Path, *, concurrency: int = 1,
                          limit: int | None = None, cache: bool = True, progress: bool = True) -> dict[str, Any]:
        """Grade every record of a generated JSONL; appends to ``output_path`` and resumes."""
        output = Path(output_path)
        done = scan_output(output, repair=True, model=JudgedRecord)
        skip = done.done | done.failed

        def todo() -> Iterator[Record]:
            for index, record in enumerate(read_records(records_path)):
                if limit is not None and index >= limit:
                    return
                if record.id not in skip:
                    yield record

        started = time.monotonic()
        await self._stream(todo(), self.ajudge_one, output, total=sum(1 for _ in todo()), desc="judge",
                           concurrency=concurrency, cache=cache, progress=progress)
        summary = _judge_summary(output)
        summary["run"] = {"seconds": round(time.monotonic() - started, 3), "skipped": len(skip)}
        write_sidecar(output, summary)
        return summary

    async def apairwise_file(self, a_path: str | Path, b_path: str | Path, output_path: str | Path, *,
                             concurrency: int = 1, limit: int | None = None, cache: bool = True, progress: bool = True) -> dict[str, Any]:
        """Compare two outputs record by record (same ids, both ``ok``); writes PairVerdict JSONL."""
        from .stats import win_rates

        output = Path(output_path)
        done = _pair_ids(output)
        b_records = {r.id: r for r in read_records(b_path) if r.status == "ok"}
        labels = (Path(a_path).name, Path(b_path).name)
        pairs = [(a, b_records[a.id]) for a in read_records(a_path) if a.status == "ok" and a.id in b_records]
        pairs = pairs[:limit] if limit is not None else pairs
        todo = [p for p in pairs if p[0].id not in done]
        await self._stream(todo, lambda pair: self.acompare(pair[0], pair[1], labels), output, total=len(todo),
                           desc="compare", concurrency=concurrency, cache=cache, progress=progress)
        verdicts = [PairVerdict.model_validate_json(line) for line in output.read_text(encoding="utf-8").splitlines() if line.strip()]
        return {"pairs": len(verdicts), **win_rates(verdicts)}


def _pair_ids(path: Path) -> set[str]:
    """Ids already compared; a torn last line (a crash mid-write) is cut off."""
    if not path.exists():
        return set()
    ids, keep = set(), 0
    with path.open("rb") as fh:
        for raw in fh:
            try:
                ids.add(PairVerdict.model_validate_json(raw).id)
            except ValueError:
                break
            keep += len(raw)
    if keep < path.stat().st_size:
        with path.open("r+b") as fh:
            fh.truncate(keep)
    return ids


def _judge_summary(path: Path) -> dict[str, Any]:
    n, scored = 0, {m: 0 for m in METRICS}
    for judged in read_records(path, JudgedRecord):
        n += 1
        for metric, value in judged.judgement.scores.items():  # type: ignore[attr-defined]
            scored[metric] += value is not None
    return {"output": str(path), "records": n, "scored": scored, "unscored": {m: n - k for m, k in scored.items()}}


def _bar(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="record", desc=desc, dynamic_ncols=True)
