"""The CSV layout of the released AIDSAFE dataset (Hugging Face ``AmazonScience/AIDSAFE``): export
records to it, and import its rows as records so the published data can be judged and compared
with one's own.

The dataset card lists the columns ``prompt``, ``refined_thoughts``, ``response`` and
``deliberation_log``; one third-party loader reads ``thoughts`` instead of ``refined_thoughts``.
The real header was not checked here (no network): :func:`read_released` takes either name and
says which columns it found when one is missing.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError
from .inputs import default_id
from .policies import PolicySet
from .records import Record, prompt_sha256, training_thoughts

__all__ = ["COLUMNS", "THOUGHT_COLUMNS", "deliberation_log", "read_released", "split_thoughts", "to_row"]

COLUMNS = ["prompt", "refined_thoughts", "response", "deliberation_log"]
"""The columns of the released dataset, in its order."""
THOUGHT_COLUMNS = ("refined_thoughts", "thoughts")
"""Where an imported row's chain of thought may be."""
_STEP = re.compile(r"^\s*(?:[-*•]|\(?\d{1,3}[.):])\s*")


# --- export ---------------------------------------------------------------------------


def _cited(policies: list[str]) -> str:
    return f" ({', '.join(policies)})" if policies else ""


def deliberation_log(record: Record) -> str:
    """A readable transcript: the intents, the seed, every turn (critique, verdict, superseded and
    new thoughts, response), and what the refiner removed."""
    lines = [
        "Intents:",
        f"  explicit: {'; '.join(record.intents.explicit) or 'none'}",
        f"  implicit: {'; '.join(record.intents.implicit) or 'none'}",
    ]
    if record.seed is not None:
        lines.append("Seed (first draft):")
        lines += [f"  {i}. {t.text}{_cited(t.policies)}" for i, t in enumerate(record.seed.thoughts, 1)]
        lines.append(f"  response: {record.seed.response}")
    for turn in record.deliberation:
        lines.append(f"[round {turn.round}] {turn.agent}: " + ("agrees" if turn.agreed else "revises"))
        if turn.critique is not None:
            critique = turn.critique
            lines += [
                f"  critique of intents: {critique.intents}",
                f"  critique of policies: {critique.policies}",
                f"  flaws: {critique.flaws}",
                f"  refusal: {critique.refusal}",
            ]
        lines += [f"  supersedes thought {mark.index}: {mark.reason}" for mark in turn.superseded]
        lines += [f"  + {t.text}{_cited(t.policies)}" for t in turn.thoughts]
        if turn.response:
            lines.append(f"  response: {turn.response}")
    if record.removed_thoughts:
        lines.append("Refiner removed:")
        lines += [f"  - {t.text} ({t.reason})" for t in record.removed_thoughts]
    return "\n".join(lines)


def to_row(record: Record) -> dict[str, str]:
    """A record as a row of the released layout."""
    return {
        "prompt": record.prompt,
        "refined_thoughts": "\n".join(t.text for t in training_thoughts(record.thoughts)),  # never a superseded thought
        "response": record.response,
        "deliberation_log": deliberation_log(record),
    }


# --- import ---------------------------------------------------------------------------


def split_thoughts(text: str) -> list[str]:
    """The steps of a chain of thought written one per line (numbering and bullets removed)."""
    return [step for step in (_STEP.sub("", line).strip() for line in text.splitlines()) if step]


def read_released(path: str | os.PathLike[str], policies: PolicySet, *, graph: str = "aidsafe-released") -> Iterator[Record]:
    """Read a CSV in the released layout as records, one per data row, streamed.

    Each record is ``ok`` with stop reason ``imported``; its thoughts are the lines of
    ``refined_thoughts`` (or ``thoughts``), citing no policy ids (the released data has none to
    read); ``policy_set`` names ``policies`` (the pack the data is to be judged against); its
    ``origin`` keeps the file, the row and every other column verbatim (e.g. ``deliberation_log``).
    The id is the ``id`` column when there is one, else the 1-based data row number, as every
    reader of a file numbers its records (:func:`~aidsafe.inputs.default_id`: ``aidsafe generate``
    on the same CSV gives the same prompt the same id). A missing column or an
    empty prompt raises :class:`InputError` with the file and line.
    """
    source = Path(path)
    if not source.is_file():
        raise InputError("file not found; check the path", file=path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # deliberation logs run long
    with source.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        thought_column = next((c for c in THOUGHT_COLUMNS if c in header), None)
        missing = [c for c in ("prompt", "response") if c not in header] + ([] if thought_column else ["refined_thoughts"])
        if missing:
            raise InputError(
                f"not the released AIDSAFE layout: no column {', '.join(repr(c) for c in missing)} "
                f"(columns found: {', '.join(repr(c) for c in header) or 'none'})",
                file=path,
                line=1,
            )
        assert thought_column is not None
        seen: dict[str, int] = {}
        row_end = reader.line_num  # the header's last line
        for row_number, row in enumerate(reader, 1):
            line, row_end = row_end + 1, reader.line_num  # a quoted field may span lines: name the row's first
            prompt = (row.get("prompt") or "").strip()
            if not prompt:
                raise InputError("empty prompt", file=path, line=line, field="prompt")
            record_id = (row.get("id") or "").strip() or default_id(row_number)
            if record_id in seen:
                raise InputError(f"duplicate id {record_id!r} (first at line {seen[record_id]})", file=path, line=line, field="id")
            seen[record_id] = line
            used = {"id", "prompt", "response", thought_column}
            yield Record.model_validate(
                {
                    "id": record_id,
                    "prompt": row["prompt"],
                    "prompt_sha256": prompt_sha256(row["prompt"]),
                    "graph": graph,
                    "policy_set": policies.ref(),
                    "intents": {},
                    "deliberation": [],
                    "stop_reason": "imported",
                    "rounds": 0,
                    "thoughts": [{"text": step, "policies": []} for step in split_thoughts(row.get(thought_column) or "")],
                    "removed_thoughts": [],
                    "response": row.get("response") or "",
                    "models": {},
                    "usage": {},
                    "status": "ok",
                    "origin": {
                        "file": source.name,
                        "row": row_number,
                        "columns": {k: v for k, v in row.items() if k is not None and k not in used and v is not None},
                    },
                }
            )
