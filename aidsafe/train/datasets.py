"""Training data in TRL's formats, with a dataset card: ``aidsafe export --format sft|dpo``.

- **SFT** (conversational, what ``trl.SFTTrainer`` reads): ``{"messages": [user, assistant]}``
  per ``ok`` generation record, optionally mixed with general prompts and answers from another
  file at a given ratio (the paper mixes 5,000 safety with 5,000 general examples).
- **SFT_OG** (:func:`export_sft_original`, ``--responses original``): the same format from a
  prompts file whose rows carry their original response - the paper's baseline "SFT on the
  original responses without CoT".
- **DPO** (conversational preference, what ``trl.DPOTrainer`` reads): ``{"prompt": [user],
  "chosen": [assistant], "rejected": [assistant]}`` per pair of ``aidsafe pairs`` that
  ``aidsafe judge`` graded, with both sides and no flag (``include_flagged`` keeps flagged ones,
  listed by flag on the card; ``unjudged`` takes pairs without the judge's score on both sides -
  never judged, or a judge call that failed - and the card says so).

The chain of thought goes where the trained model should learn to put it: a ``<think>`` block
before the response (``cot="think"``), the chat template's reasoning field of the assistant message
(``cot="reasoning"``, e.g. ``reasoning_content``), or nowhere (``cot="none"``). Each thought keeps
the ids of the policies it cites, in brackets. The folder holds ``train.jsonl`` and a ``README.md``
card for the Hugging Face Hub; ``datasets.load_dataset(FOLDER)`` reads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import InputError
from ..outputs import atomic_text, atomic_write_text, read_record_lines
from ..pairs.judged import PAIR_METRIC, JudgedPair, in_dpo_export, judged_pair_or_plain, side_score
from ..pairs.schema import PairRecord, Side
from ..records import CitedThought, Record, training_thoughts

__all__ = ["CotPlacement", "ExportCounts", "assistant_message", "cot_text", "export_dpo", "export_sft", "export_sft_original"]

CotPlacement = Literal["think", "reasoning", "none"]


def cot_text(thoughts: Sequence[CitedThought]) -> str:
    """The chain of thought, one thought per line, each with the ids of the policies it cites."""
    return "\n".join(f"{t.text} [{', '.join(t.policies)}]" if t.policies else t.text for t in thoughts)


def assistant_message(side: Side | Record, cot: CotPlacement, reasoning_field: str = "reasoning_content") -> dict[str, str]:
    """The assistant turn of one side: the response, with the chain of thought placed as asked
    (superseded thoughts left out: :func:`~aidsafe.records.training_thoughts`)."""
    thoughts = cot_text(training_thoughts(side.thoughts))
    if cot == "think":
        return {"role": "assistant", "content": f"<think>\n{thoughts}\n</think>\n\n{side.response}"}
    if cot == "reasoning":
        return {"role": "assistant", "content": side.response, reasoning_field: thoughts}
    return {"role": "assistant", "content": side.response}


@dataclass
class ExportCounts:
    """What an export wrote and left out, for the card and the command line."""

    rows: int = 0
    safety: int = 0
    general: int = 0
    left_out: Counter[str] = field(default_factory=Counter)
    graphs: Counter[str] = field(default_factory=Counter)
    policy_sets: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    thoughts: int = 0
    superseded_dropped: int = 0
    """Thoughts a reviewer superseded, found in the input and left out of the chains of thought."""
    unjudged: int = 0
    """DPO: exported pairs without the judge's :data:`~aidsafe.pairs.judged.PAIR_METRIC` score on
    both sides - never judged, or a judge call that failed (only with ``unjudged=True``)."""
    included_flags: Counter[str] = field(default_factory=Counter)
    """DPO: exported pairs by flag (only with ``include_flagged=True``)."""


@contextlib.contextmanager
def _prepared(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """The export's folder, made if need be; an export that fails (a bad line, a refused pair)
    removes the folders it made, so that a refused export leaves nothing behind. A folder that was
    there keeps what it held (train.jsonl and README.md are replaced atomically)."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise InputError("the export is a folder (train.jsonl and README.md): this path is a file", file=out)
    made = [p for p in (out, *out.parents) if not p.exists()]  # innermost first
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        for path in made:
            try:
                path.rmdir()  # only while empty: never what something else put there meanwhile
            except OSError:
                break
        raise


def _general_rows(path: str | os.PathLike[str], prompt_field: str, response_field: str) -> Iterator[dict[str, Any]]:
    """General examples: ``{"messages": [...]}`` lines taken as they are, or prompt/response fields."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                raise InputError(f"not JSON ({exc})", file=path, line=number) from None
            if isinstance(data, dict) and isinstance(data.get("messages"), list):
                yield {"messages": data["messages"]}
                continue
            prompt = data.get(prompt_field) if isinstance(data, dict) else None
            answer = data.get(response_field) if isinstance(data, dict) else None
            if not isinstance(prompt, str) or not isinstance(answer, str) or not prompt.strip() or not answer.strip():
                raise InputError(
                    f"a general example needs 'messages' or the text fields {prompt_field!r} and {response_field!r}",
                    file=path, line=number,
                )
            yield {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def export_sft(
    records_path: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    cot: CotPlacement = "think",
    reasoning_field: str = "reasoning_content",
    mix: str | os.PathLike[str] | None = None,
    mix_ratio: float = 1.0,
    mix_prompt_field: str = "prompt",
    mix_response_field: str = "response",
    license: str = "other",
    name: str | None = None,
) -> ExportCounts:
    """Write the SFT set of a generation output (judged records are fine too) into ``folder``.

    Failed records are left out and counted. An ``ok`` record without a chain of thought is an
    error naming its line (``cot="none"`` takes it). ``mix`` adds ``round(mix_ratio x safety
    rows)`` general examples, the first ones of that file, after the safety rows.
    """
    _check_mix(mix, mix_ratio)
    counts = ExportCounts()
    with _prepared(folder) as out, atomic_text(out / "train.jsonl") as sink:
        for line, record in read_record_lines(records_path, _record_model, what="an aidsafe record"):
            if record.status != "ok":
                counts.left_out["failed record"] += 1
                continue
            if record.thoughts and not training_thoughts(record.thoughts) and cot != "none":
                counts.left_out["only superseded thoughts"] += 1
                counts.superseded_dropped += len(record.thoughts)
                continue
            if not record.thoughts and cot != "none":
                raise InputError(f"record {record.id!r} is ok but has no chain of thought to train on", file=records_path, line=line.number)
            message = assistant_message(record, cot, reasoning_field)
            sink.write(json.dumps({"messages": [{"role": "user", "content": record.prompt}, message]}, ensure_ascii=False) + "\n")
            counts.safety += 1
            kept = len(training_thoughts(record.thoughts))
            counts.thoughts += kept
            counts.superseded_dropped += len(record.thoughts) - kept
            counts.graphs[record.graph] += 1
            counts.policy_sets[f"{record.policy_set.name} {record.policy_set.version}"] += 1
            counts.models.update(set(record.models.values()))
        if not counts.safety:
            raise InputError("holds no ok record: nothing to export", file=records_path)
        _write_mix(sink, counts, mix, mix_ratio, mix_prompt_field, mix_response_field)
    counts.rows = counts.safety + counts.general
    atomic_write_text(out / "README.md", _card("sft", counts, cot=cot, license=license, name=name or out.name, mix=mix,
                                                   digest=_digest(out / "train.jsonl")))
    return counts


_AIDSAFE_OUTPUT = (
    (("graph", "thoughts", "status"), "a record of aidsafe generate (or aidsafe judge)"),
    (("refined_thoughts", "deliberation_log"), "a row of the AIDSAFE CSV layout (aidsafe export --format aidsafe-csv, the released dataset)"),
)
"""Fields by which a row of a "prompts file" is recognised as aidsafe's own output, whose
``response`` is the model's generated reply and not an original response."""


def export_sft_original(
    prompts_path: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    response_field: str = "response",
    prompt_field: str = "prompt",
    id_field: str = "id",
    mix: str | os.PathLike[str] | None = None,
    mix_ratio: float = 1.0,
    mix_prompt_field: str = "prompt",
    mix_response_field: str = "response",
    license: str = "other",
    name: str | None = None,
) -> ExportCounts:
    """Write the SFT_OG baseline set into ``folder``: each prompt of a prompts file with its
    original response and no chain of thought (the paper's "SFT on the original responses
    without CoT"), in the format of :func:`export_sft`, mixed the same way.

    The prompts file is read as ``aidsafe generate`` reads it (JSONL, CSV, Parquet, a saved
    dataset, ...: see :mod:`aidsafe.inputs`; the same ids, a bad line an error naming it); a row
    without a non-empty string in ``response_field`` is an error naming the file and line, and so
    is a row that is aidsafe's own output (a generation record, with ``graph``, ``thoughts`` and
    ``status``; a row of the AIDSAFE CSV layout): its response is a model's generated reply, not
    an original one.

    Every prompt of the file is taken, where :func:`export_sft` takes only the ``ok`` records of
    a generation output: to compare SFT_OG with SFT on the same prompts, give this the prompts of
    those records only (see docs/preference-data-and-training.md).
    """
    from ..inputs import read_prompts

    _check_mix(mix, mix_ratio)
    if not Path(prompts_path).exists():
        raise InputError("prompts file not found; check the path", file=prompts_path)
    counts = ExportCounts()
    signature = tuple(dict.fromkeys(name for fields, _ in _AIDSAFE_OUTPUT for name in fields if name != response_field))
    with _prepared(folder) as out, atomic_text(out / "train.jsonl") as sink:
        for item in read_prompts(prompts_path, prompt_field=prompt_field, id_field=id_field, extra_fields=(response_field, *signature)):
            for fields, what in _AIDSAFE_OUTPUT:
                if all(name in item.extra for name in fields):
                    raise InputError(
                        f"prompt {item.id!r} looks like aidsafe output, not a prompts file: it has the fields "
                        f"{', '.join(fields)} of {what}, so its {response_field!r} would be a model's generated reply, not an "
                        "original response; --responses original (SFT_OG) needs a prompts file whose rows carry their own "
                        "responses (e.g. the prompts file given to aidsafe generate, with a response field); SFT on the generated "
                        "records is --format sft without --responses",
                        file=item.source, line=item.line,
                    )
            response = item.extra.get(response_field)
            if not isinstance(response, str) or not response.strip():
                found = "missing" if response is None else f"{type(response).__name__} {response!r}"[:80]
                raise InputError(
                    f"prompt {item.id!r} has no original response ({found}); --responses original needs a non-empty "
                    f"{response_field!r} field on every row (--response-field names another)",
                    file=item.source, line=item.line, field=response_field,
                )
            row = {"messages": [{"role": "user", "content": item.prompt}, {"role": "assistant", "content": response}]}
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            counts.safety += 1
        _write_mix(sink, counts, mix, mix_ratio, mix_prompt_field, mix_response_field)
    counts.rows = counts.safety + counts.general
    card = _card("sft_og", counts, cot="none", license=license, name=name or out.name, mix=mix, digest=_digest(out / "train.jsonl"),
                 source=f"`{Path(prompts_path).name}`, field `{response_field}`")
    atomic_write_text(out / "README.md", card)
    return counts


def _check_mix(mix: str | os.PathLike[str] | None, mix_ratio: float) -> None:
    if mix_ratio < 0:
        raise InputError(f"mix ratio must be 0 or more, got {mix_ratio}")
    if mix is not None and not Path(mix).is_file():
        raise InputError("file of general examples to mix in not found; check the path", file=mix)


def _write_mix(sink: Any, counts: ExportCounts, mix: str | os.PathLike[str] | None, mix_ratio: float,
               prompt_field: str, response_field: str) -> None:
    """``round(mix_ratio x safety rows)`` general examples, the first ones of ``mix``, after the safety rows."""
    if mix is None:
        return
    wanted = round(mix_ratio * counts.safety)
    for row in itertools.islice(_general_rows(mix, prompt_field, response_field), wanted):
        sink.write(json.dumps(row, ensure_ascii=False) + "\n")
        counts.general += 1


def export_dpo(
    pairs_path: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    cot: CotPlacement = "think",
    reasoning_field: str = "reasoning_content",
    include_flagged: bool = False,
    unjudged: bool = False,
    license: str = "other",
    name: str | None = None,
) -> ExportCounts:
    """Write the DPO set of a judged ``aidsafe pairs`` output (``aidsafe judge PAIRS.jsonl``) into
    ``folder``: one row per pair with both sides; pairs without a rejected side, and flagged
    pairs unless ``include_flagged``, are left out and counted by reason (flagged pairs that go in
    are counted by flag, and the card lists them).

    A pair without the judge's :data:`~aidsafe.pairs.judged.PAIR_METRIC` score on both sides - one
    ``aidsafe judge`` never graded, or whose judge call failed (flag ``unjudged``, which
    ``include_flagged`` would let through) - is refused (:class:`InputError` naming the file and
    line): the judge's check that the rejected side is less faithful to the policies than the
    chosen one (the ``rejected_not_worse`` flag) never ran on it. ``unjudged=True`` exports such
    pairs as they are, counted, and the card says that they were not judged. A refused export
    leaves no folder behind."""
    counts = ExportCounts()
    with _prepared(folder) as out, atomic_text(out / "train.jsonl") as sink:
        for line, pair in read_record_lines(pairs_path, judged_pair_or_plain, what="a pair record"):
            if not in_dpo_export(pair, include_flagged=include_flagged):
                reason = "no pair" if pair.rejected is None or pair.status != "ok" else "flagged: " + ", ".join(pair.flags)
                counts.left_out[reason] += 1
                continue
            assert pair.chosen is not None and pair.rejected is not None
            if not _scored_by_judge(pair):
                if not unjudged:
                    raise InputError(_unjudged_refusal(pair, pairs_path), file=pairs_path, line=line.number)
                counts.unjudged += 1
            counts.included_flags.update(pair.flags)
            row = {
                "prompt": [{"role": "user", "content": pair.prompt}],
                "chosen": [assistant_message(pair.chosen, cot, reasoning_field)],
                "rejected": [assistant_message(pair.rejected, cot, reasoning_field)],
            }
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            counts.safety += 1
            kept = len(training_thoughts(pair.chosen.thoughts))
            counts.thoughts += kept
            counts.superseded_dropped += len(pair.chosen.thoughts) - kept + len(pair.rejected.thoughts) - len(training_thoughts(pair.rejected.thoughts))
            counts.graphs[str(pair.source.get("graph", "?"))] += 1
            counts.policy_sets[f"{pair.policy_set.name} {pair.policy_set.version}"] += 1
            counts.models.update(set(pair.models.values()))
        if not counts.safety:
            raise InputError(f"holds no pair to export ({', '.join(f'{k}: {v}' for k, v in counts.left_out.items()) or 'empty'})",
                             file=pairs_path)
    counts.rows = counts.safety
    atomic_write_text(out / "README.md", _card("dpo", counts, cot=cot, license=license, name=name or out.name, mix=None,
                                                   digest=_digest(out / "train.jsonl")))
    return counts


def _scored_by_judge(pair: PairRecord) -> bool:
    """Whether the judge scored both sides of the pair on :data:`~aidsafe.pairs.judged.PAIR_METRIC`:
    only then did its check that the rejected side is worse run (a judged pair whose judge call
    failed has a judgement with no score, and the flag ``unjudged``)."""
    return side_score(pair, "chosen") is not None and side_score(pair, "rejected") is not None


def _holds_judged_lines(path: str | os.PathLike[str]) -> bool:
    """Whether any line of a pairs file carries a judgement (read only to word a refusal)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for text in handle:
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict) and "judgement" in data:
                return True
    return False


def _unjudged_refusal(pair: PairRecord, pairs_path: str | os.PathLike[str]) -> str:
    """Why a pair without the judge's scores is refused, and what to run: ``aidsafe judge`` takes a
    pairs file as ``aidsafe pairs`` wrote it and refuses lines already judged, so a file that holds
    judged lines is judged again from the output of ``aidsafe pairs``."""
    unsure = ("(the judge flags pairs whose rejected side is not worse, which the export leaves out), or pass --unjudged "
              "to export the pairs without that check")
    if isinstance(pair, JudgedPair) and pair.judgement is not None:
        judgement = pair.judgement
        sides = [side for side, j in (("chosen", judgement.chosen), ("rejected", judgement.rejected))
                 if j is None or j.scores.get(PAIR_METRIC) is None]
        errors = [j.error for j in (judgement.chosen, judgement.rejected) if j is not None and j.error]
        why = f": {errors[0][:160]}" if errors else ""
        what = (f"has no {PAIR_METRIC} score from the judge on its {' and '.join(sides)} side{'s' if len(sides) > 1 else ''}{why} "
                "(flag unjudged), so nothing checked that its rejected side is worse")
    else:
        what = "was never judged"
    if isinstance(pair, JudgedPair) or _holds_judged_lines(pairs_path):
        how = ("judge the pairs file that aidsafe pairs wrote again, into a new file - `aidsafe judge PAIRS.jsonl -o JUDGED.jsonl` "
               f"(aidsafe judge refuses lines already judged, so not {pairs_path} itself) - and export that file")
    else:
        how = f"grade the pairs first with `aidsafe judge {pairs_path} -o JUDGED.jsonl` and export that file"
    return f"pair {pair.id!r} {what}: {how} {unsure}"


def _record_model(data: dict[str, Any]) -> type[Record]:
    from ..judge.schema import judged_or_plain  # the judge package only where SFT reads judged records

    return judged_or_plain(data)


def _listing(counter: Counter[str]) -> str:
    return ", ".join(f"{key} ({count})" for key, count in counter.most_common()) or "–"


def _digest(path: Path) -> str:
    """SHA-256 of the data file, for the card."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


_FLAG_MEANING = {
    "chosen_unsafe": "the safety scorer found the chosen side violating too",
    "rejected_not_worse": "the judge did not rate the rejected side's chain of thought less faithful to the policies than the chosen side's",
    "unjudged": "the judge could not score a side",
}


def _dpo_checks(counts: ExportCounts) -> str:
    """What the card may claim of the pairs beyond the scorer's verdict on the rejected side:
    which checks every pair passed, and which pairs went in despite a flag."""
    claim = ("By default the export leaves out flagged pairs: `chosen_unsafe` (the safety scorer found the chosen side "
             "violating too), `rejected_not_worse` (the judge did not rate the rejected side's chain of thought less "
             "faithful to the policies than the chosen side's) and `unjudged` (the judge could not score a side).")
    if not counts.included_flags:
        return claim + " No flagged pair is in this set."
    flagged = "; ".join(f"`{flag}` {n} ({_FLAG_MEANING.get(flag, 'a doubt aidsafe raised about the pair')})"
                        for flag, n in counts.included_flags.most_common())
    return claim + f" **This set includes flagged pairs** (`--include-flagged`): {flagged}."


def _card(method: Literal["sft", "sft_og", "dpo"], counts: ExportCounts, *, cot: str, license: str, name: str,
          mix: str | os.PathLike[str] | None, digest: str, source: str = "") -> str:
    """A dataset card for the Hugging Face Hub: metadata, provenance, counts, statistics.

    ``sft_og`` is the baseline of original responses without a chain of thought (``source``
    names the prompts file and its response field).

    No ``configs:`` block: ``train.jsonl`` names its split already, and with such a block
    ``datasets`` keys its cache on the folder's name and the file pattern alone, so that two
    exports in folders of the same name would load as one."""
    from .. import __version__

    sft = method != "dpo"
    trainer = "trl.SFTTrainer (conversational: messages)" if sft else "trl.DPOTrainer (conversational preference: prompt, chosen, rejected)"
    placement = {"think": "a `<think>` block before the response", "reasoning": "the assistant message's reasoning field", "none": "left out"}[cot]
    table = [f"| rows | {counts.rows} |",
             f"| {'examples with their original response' if method == 'sft_og' else 'safety examples'} | {counts.safety} |"]
    if mix is not None:
        table.append(f"| general examples (from `{Path(mix).name}`) | {counts.general} |")
    if method == "dpo":
        table.append(f"| exported without the judge's scores on both sides (`--unjudged`) | {counts.unjudged} |")
        table += [f"| included although flagged (`--include-flagged`): {flag} | {n} |" for flag, n in counts.included_flags.most_common()]
    table += [f"| left out: {reason} | {n} |" for reason, n in counts.left_out.items()]
    if method == "sft_og":
        about = f"""**SFT_OG baseline**: supervised fine-tuning data of the prompts with their **original responses and
no chain of thought** - the baseline of AIDSAFE (Kumarage et al., arXiv 2505.21784) called "SFT on the
original responses without CoT" (SFT_OG), to compare against SFT on the policy-embedded chains of
thought. Written by aidsafe {__version__}. Format: {trainer}."""
        provenance = f"| source | {source} |\n| chain of thought | none (original responses) |"
    else:
        about = f"""{"Supervised fine-tuning" if sft else "Preference (DPO)"} data made with aidsafe {__version__}, an
implementation of AIDSAFE (Kumarage et al., arXiv 2505.21784): policy-embedded chains of thought
from multi-agent deliberation{"" if sft else "; in every pair the rejected side was produced by the ear-whisperer and found violating by the safety scorer"}.
Format: {trainer}. The chain of thought is placed in {placement}; each thought ends with the ids of
the policies it cites, in brackets."""
        if method == "dpo":
            about += "\n\n" + _dpo_checks(counts)
        provenance = f"""| graphs | {_listing(counts.graphs)} |
| policy packs | {_listing(counts.policy_sets)} |
| models | {_listing(counts.models)} |"""
        table += [f"| mean thoughts per {'example' if sft else 'chosen side'} | {counts.thoughts / counts.safety:.2f} |",
                  f"| superseded thoughts left out | {counts.superseded_dropped} |"]
    if method == "dpo" and counts.unjudged:
        about += f"""

**{counts.unjudged} of these pairs have no judge score on both sides** (exported with `--unjudged`):
`aidsafe judge` never graded them or could not score a side, so nothing checked that their rejected
side is less faithful to the policies than the chosen side (the `rejected_not_worse` flag); the
rejected side is only the safety scorer's verdict."""
    return f"""---
license: {license}
task_categories:
- text-generation
tags:
- safety
- {"baseline" if method == "sft_og" else "chain-of-thought"}
- aidsafe
- {"sft" if sft else "dpo"}
---

# {name}

{about}

| provenance | |
| --- | --- |
{provenance}

| counts | |
| --- | --- |
{chr(10).join(table)}

SHA-256 of `train.jsonl`: `{digest}`

Licence: `{license}` — set it with `aidsafe export --license`; the prompts' own licences apply too.
"""
