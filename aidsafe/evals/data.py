"""Evaluation data from files in their upstream formats (no inspect_ai needed here).

Each reader returns :class:`EvalItem` s (id, input, target, metadata); :mod:`aidsafe.evals.tasks`
turns them into inspect samples. Formats, told apart by their columns:

- **prompts** (``safety``, ``strongreject``, ``cot_faithfulness``): StrongREJECT CSV
  (``category,source,forbidden_prompt``); BeaverTails JSONL (``prompt``, ``is_safe``,
  ``category``: the prompts of its unsafe pairs, each once); WildChat JSONL (``conversation``,
  ``toxic``: the first user turn of the toxic conversations); XSTest CSV (its ``unsafe`` prompts);
  or any JSONL/CSV with a prompt field (``prompt_field``, default ``prompt``: Do-Not-Answer's
  files, aidsafe's own prompt files).
- **xstest** (``overrefusal``): XSTest CSV ``prompt,type,label`` (``label`` safe or unsafe;
  ``type`` such as ``homonyms`` or ``contrast_homonyms``).
- **mmlu** (``utility``): the original CSV without a header (``question,A,B,C,D,answer``), or
  JSONL/CSV with ``question``, ``choices`` (four) or ``A``-``D``, and ``answer`` (a letter or
  0-3), optional ``subject``.

``hf:NAME`` or ``hf:NAME:SPLIT`` reads a Hugging Face dataset by name through ``datasets``
(needs the network; not exercised by the tests) and applies the same column rules.
A file with the wrong columns, a bad line or an empty prompt is an :class:`InputError` naming
the file and line.

A sample without an ``id`` field gets the id ``aidsafe generate`` and ``aidsafe import`` give
the same record of the same file (:func:`aidsafe.inputs.default_id`): its 1-based number among
the file's records - the non-blank lines of JSONL, the data rows of a CSV, the rows of a dataset -
counting the rows a task leaves out (a safe pair, a safe XSTest prompt) too.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..inputs import default_id

__all__ = ["LETTERS", "EvalItem", "read_mmlu", "read_numbered_rows", "read_prompts", "read_rows", "read_xstest"]

LETTERS = ("A", "B", "C", "D")


@dataclass
class EvalItem:
    """One evaluation sample: what the model is asked, and what the scorer needs."""

    id: str
    input: str
    target: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


def read_rows(source: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, row)`` for every row of a JSONL or CSV file (CSV: the header's columns), or of a
    Hugging Face dataset named ``hf:NAME[:SPLIT]`` (row numbers from 1)."""
    for line, _, row in read_numbered_rows(source):
        yield line, row


def read_numbered_rows(source: str | os.PathLike[str]) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """``(line, number, row)`` for every row of :func:`read_rows`' sources: ``line`` for errors (a
    CSV row's last line), ``number`` the row's 1-based number among the file's records - what
    :func:`~aidsafe.inputs.default_id` makes the default id of."""
    text = os.fspath(source)
    if text.startswith("hf:"):
        for number, row in _hub_rows(text):
            yield number, number, row
        return
    path = Path(text)
    if not path.is_file():
        raise InputError("evaluation data file not found; check the path", file=path)
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise InputError("empty CSV file: no header", file=path, line=1)
            for number, row in enumerate(reader, 1):
                yield reader.line_num, number, {k.strip(): v for k, v in row.items() if k is not None}
        return
    records = 0
    with open(path, encoding="utf-8-sig", newline="\n") as handle:  # lines end at "\n" only, as aidsafe generate reads them
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            records += 1
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InputError(f"not JSON ({exc})", file=path, line=number) from None
            if not isinstance(row, dict):
                raise InputError("a line must be a JSON object", file=path, line=number)
            yield number, records, row


def _hub_rows(name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    import datasets

    _, dataset, *rest = name.split(":")
    split = rest[0] if rest else "train"
    try:
        rows = datasets.load_dataset(dataset, split=split)
    except Exception as exc:  # no network, no such dataset, no such split
        raise InputError(f"could not load the Hugging Face dataset {dataset!r} (split {split!r}): {exc}", file=name) from None
    for number, row in enumerate(rows, 1):
        yield number, dict(row)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _columns_error(source: Any, line: int, row: dict[str, Any], wanted: str) -> InputError:
    return InputError(f"has columns {sorted(row)}; {wanted}", file=source, line=line)


def read_prompts(source: str | os.PathLike[str], *, prompt_field: str = "prompt", limit: int | None = None) -> list[EvalItem]:
    """Harmful prompts from any of the prompt formats (see the module docstring)."""
    items: list[EvalItem] = []
    seen: set[str] = set()
    layout: str | None = None
    for line, number, row in read_numbered_rows(source):
        if layout is None:
            layout = _prompt_layout(row, prompt_field)
            if layout is None:
                raise _columns_error(source, line, row, f"expected StrongREJECT (forbidden_prompt), BeaverTails (prompt, is_safe), "
                                                       f"WildChat (conversation, toxic), XSTest (prompt, type, label) or a {prompt_field!r} field")
        item = _prompt_item(layout, row, line, number, source, prompt_field)
        if item is None or item.input in seen:
            continue  # a safe pair, a non-toxic chat, a safe XSTest prompt, or a prompt seen before
        seen.add(item.input)
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise InputError("holds no prompt to evaluate", file=source)
    return items


def _prompt_layout(row: dict[str, Any], prompt_field: str) -> str | None:
    if "forbidden_prompt" in row:
        return "strongreject"
    if "conversation" in row and "toxic" in row:
        return "wildchat"
    if {"prompt", "is_safe"} <= set(row):
        return "beavertails"
    if {"prompt", "type", "label"} <= set(row):
        return "xstest"
    if prompt_field in row:
        return "plain"
    return None


def _prompt_item(layout: str, row: dict[str, Any], line: int, number: int, source: Any, prompt_field: str) -> EvalItem | None:
    meta: dict[str, Any] = {"format": layout}
    if layout == "strongreject":
        prompt = _text(row.get("forbidden_prompt"))
        meta |= {"category": _text(row.get("category")), "source": _text(row.get("source"))}
    elif layout == "wildchat":
        if not row.get("toxic"):
            return None
        turns = row.get("conversation") or []
        prompt = next((_text(t.get("content")) for t in turns if isinstance(t, dict) and t.get("role") == "user"), "")
    elif layout == "beavertails":
        if row.get("is_safe") in (True, "True", "true", 1, "1"):
            return None
        prompt = _text(row.get("prompt"))
        categories = row.get("category") or {}
        meta["category"] = ", ".join(sorted(k for k, v in categories.items() if v)) if isinstance(categories, dict) else str(categories)
    elif layout == "xstest":
        if _text(row.get("label")).lower() != "unsafe":
            return None
        prompt = _text(row.get("prompt"))
        meta["type"] = _text(row.get("type"))
    else:
        prompt = _text(row.get(prompt_field))
        meta |= {k: v for k, v in row.items() if k in ("category", "risk_area", "types_of_harm", "source") and isinstance(v, str)}
    if not prompt:
        raise InputError("empty prompt", file=source, line=line)
    return EvalItem(id=_item_id(row, number), input=prompt, metadata=meta)


def _item_id(row: dict[str, Any], number: int) -> str:
    """The row's ``id`` field, else the default id of its record number (as aidsafe generate's)."""
    ident = row.get("id")
    return str(ident) if ident not in (None, "") else default_id(number)


def read_xstest(source: str | os.PathLike[str], *, limit: int | None = None) -> list[EvalItem]:
    """XSTest: every prompt with its label (``safe``: must be answered; ``unsafe``: a contrast to refuse)."""
    items: list[EvalItem] = []
    for line, number, row in read_numbered_rows(source):
        if not {"prompt", "type", "label"} <= set(row):
            raise _columns_error(source, line, row, "an XSTest file needs prompt, type and label")
        label = _text(row.get("label")).lower()
        if label not in ("safe", "unsafe"):
            raise InputError(f"label must be safe or unsafe, got {row.get('label')!r}", file=source, line=line)
        prompt = _text(row.get("prompt"))
        if not prompt:
            raise InputError("empty prompt", file=source, line=line)
        items.append(EvalItem(id=_item_id(row, number), input=prompt,
                              target=label, metadata={"label": label, "type": _text(row.get("type"))}))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise InputError("holds no prompt to evaluate", file=source)
    return items


def read_mmlu(source: str | os.PathLike[str], *, limit: int | None = None, subject: str | None = None) -> list[EvalItem]:
    """Four-choice questions; ``target`` is the letter of the right answer."""
    text = os.fspath(source)
    items: list[EvalItem] = []
    if text.lower().endswith(".csv") and Path(text).is_file() and _headerless(Path(text)):
        rows: Iterator[tuple[int, int, dict[str, Any]]] = _headerless_rows(Path(text))
    else:
        rows = read_numbered_rows(source)
    default_subject = subject or Path(text).stem.removesuffix("_test").removesuffix("_dev").replace("_", " ")
    for line, number, row in rows:
        question = _text(row.get("question"))
        if isinstance(row.get("choices"), list):
            choices = [_text(c) if isinstance(c, str) else str(c) for c in row["choices"]]
        elif all(letter in row for letter in LETTERS):
            choices = [_text(row[letter]) for letter in LETTERS]
        else:
            raise _columns_error(source, line, row, "an MMLU question needs question, choices (or A, B, C, D) and answer")
        if not question or len(choices) != 4 or not all(choices):
            raise InputError("a question needs its text and four non-empty choices", file=source, line=line)
        answer = row.get("answer")
        if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer <= 3:
            letter = LETTERS[answer]
        elif isinstance(answer, str) and answer.strip().upper() in LETTERS:
            letter = answer.strip().upper()
        elif isinstance(answer, str) and answer.strip() in ("0", "1", "2", "3"):
            letter = LETTERS[int(answer.strip())]
        else:
            raise InputError(f"answer must be A-D or 0-3, got {answer!r}", file=source, line=line)
        items.append(EvalItem(id=_item_id(row, number), input=question, target=letter,
                              metadata={"choices": choices, "subject": _text(row.get("subject")) or default_subject}))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise InputError("holds no question", file=source)
    return items


def _headerless(path: Path) -> bool:
    """The original MMLU CSVs have no header: their first row is a question, not column names."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        first = next(csv.reader(handle), [])
    return len(first) == 6 and first[0].strip().lower() != "question"


def _headerless_rows(path: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        number = 0
        for row in reader:
            if not row:
                continue
            number += 1
            if len(row) != 6:
                raise InputError(f"expected 6 columns (question, A, B, C, D, answer), got {len(row)}", file=path, line=reader.line_num)
            yield reader.line_num, number, dict(zip(("question", *LETTERS, "answer"), row, strict=True))
