"""Records paired by id must name the same prompt.

``compare``, ``judge --against``, ``merge --input``, the report's judged files and every resume
pair records by id. An id is a position in its file when the input had no id column, so two files
made from different inputs, or numbered by different id rules (records written before every
reader numbered a file's records 1, 2, 3 ...), can share an id with different prompts under it.
Each paired operation checks its pairs here and refuses the files, listing the first few ids,
instead of pairing them. Two records name the same prompt when their ``prompt_sha256`` digests
are equal (both have one), else when their prompt texts are (records that predate the digest).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .errors import InputError
from .records import prompt_sha256

__all__ = ["MOST_LISTED", "PromptCheck", "Prompted", "ResumeCheck", "check_inputs", "prompt_key", "prompts_in", "same_prompt"]

MOST_LISTED = 5
"""How many mismatched ids an error lists before ``and N more``."""

_HINT = (
    "records are paired by id, so these files cannot be paired: were they made from different inputs, or is one "
    "older than the rule that numbers the records of a file without an id column 1, 2, 3 ... (docs/records-and-ids.md, Ids)? "
    "Pair outputs of the same input, made by the same aidsafe, or give the input an id column"
)


class Prompted(Protocol):
    """Anything with an id and a prompt: a record, a pair, a judged record, an input item."""

    @property
    def id(self) -> str: ...

    @property
    def prompt(self) -> str: ...


def _digest(item: object) -> str | None:
    value = getattr(item, "prompt_sha256", None)
    return value if isinstance(value, str) and value else None


def same_prompt(a: Prompted, b: Prompted) -> bool:
    """Whether ``a`` and ``b`` name the same prompt: by their digests when both carry one, else by
    the text."""
    da, db = _digest(a), _digest(b)
    if da is not None and db is not None:
        return da == db
    return a.prompt == b.prompt


def prompt_key(item: Prompted | str) -> str:
    """A short key of a prompt (its digest's first 16 hex digits) for joins that keep only the key
    of one side in memory: the record's own digest when it has one, else computed from the text."""
    if isinstance(item, str):
        return prompt_sha256(item)[:16]
    return (_digest(item) or prompt_sha256(item.prompt))[:16]


def _excerpt(text: str | None, most: int = 50) -> str:
    if text is None:
        return "(not read)"
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= most else flat[: most - 1] + "…")


class PromptCheck:
    """Collects the ids of two sides ``a`` and ``b`` whose prompts differ; :meth:`raise_if_any`
    refuses them with the first :data:`MOST_LISTED` listed, each with both prompts cut short."""

    def __init__(self, a: str, b: str, *, hint: str = _HINT) -> None:
        self.a, self.b, self.hint = a, b, hint
        self.count = 0
        self.listed: list[list[Any]] = []
        """``[id, a's prompt, b's prompt]`` of the first mismatches (a prompt None until known)."""

    def pair(self, record_id: str, a: Prompted, b: Prompted) -> bool:
        """Check one pair; False (and counted) when the prompts differ."""
        if same_prompt(a, b):
            return True
        self.mismatch(record_id, a.prompt, b.prompt)
        return False

    def mismatch(self, record_id: str, a_prompt: str | None, b_prompt: str | None) -> None:
        """Count one id whose prompts differ (a prompt may be None when only its digest is at hand)."""
        self.count += 1
        if len(self.listed) < MOST_LISTED:
            self.listed.append([record_id, a_prompt, b_prompt])

    def fill(self, side: str, prompts: Mapping[str, str]) -> None:
        """Fill in the listed prompts of ``side`` (``"a"`` or ``"b"``) that were not at hand."""
        column = 1 if side == "a" else 2
        for entry in self.listed:
            if entry[column] is None:
                entry[column] = prompts.get(entry[0])

    def error(self, *, file: str | os.PathLike[str] | None = None, more: str = "") -> InputError | None:
        """The refusal of the mismatches found, or None when there is none."""
        if not self.count:
            return None
        noun = "id names a different prompt" if self.count == 1 else "ids name different prompts"
        listed = ", ".join(
            f"id {record_id!r} ({self.a}: {_excerpt(a)} / {self.b}: {_excerpt(b)})" for record_id, a, b in self.listed
        )
        rest = f", and {self.count - len(self.listed)} more" if self.count > len(self.listed) else ""
        return InputError(f"{self.count} {noun} in {self.a} and {self.b}: {listed}{rest}{more}; {self.hint}", file=file)

    def raise_if_any(self, *, file: str | os.PathLike[str] | None = None) -> None:
        error = self.error(file=file)
        if error is not None:
            raise error


def check_inputs(inputs: Mapping[str, Iterable[Prompted]]) -> None:
    """Refuse inputs (label -> records) in which one id names different prompts.

    Each id is checked against the first input that holds it; the error lists the first pair of
    inputs that disagree (and says how many other pairs do).
    """
    first: dict[str, tuple[str, Prompted]] = {}
    checks: dict[tuple[str, str], PromptCheck] = {}
    for label, records in inputs.items():
        for record in records:
            seen = first.setdefault(record.id, (label, record))
            if seen[0] == label:
                continue
            check = checks.setdefault((seen[0], label), PromptCheck(seen[0], label))
            check.pair(record.id, seen[1], record)
    failing = [check for check in checks.values() if check.count]
    if failing:
        more = f" (and mismatches between {len(failing) - 1} other pair(s) of inputs)" if len(failing) > 1 else ""
        error = failing[0].error(more=more)
        assert error is not None
        raise error


_RESUME_HINT = (
    "resuming would keep records of other prompts under these ids: resume an output with the input it was written "
    "from. An output written before every reader numbered the records of a file without an id column 1, 2, 3 ... "
    "(a CSV, Parquet file or dataset folder, or a text or JSONL file with blank lines) cannot be resumed from that "
    "file: give the input the old ids in an id column, or start afresh with --overwrite or a new output"
)


class ResumeCheck:
    """A resumed input's items against the prompts of the records its output already holds
    (``stored``: id -> :func:`prompt_key`, from ``scan_output(prompts=True)``)."""

    def __init__(self, stored: Mapping[str, str], input_name: str, output: str | os.PathLike[str],
                 *, others: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.stored = stored
        self.output = output
        self.files = [output, *others]
        self.check = PromptCheck(input_name, os.fspath(output), hint=_RESUME_HINT)

    def item(self, record_id: str, prompt: str) -> None:
        """Check one input item: an id with a record must have that record's prompt."""
        key = self.stored.get(record_id)
        if key is not None and key != prompt_key(prompt):
            self.check.mismatch(record_id, prompt, None)

    def raise_if_any(self) -> None:
        """Refuse the resume when an item's id names another prompt in the output."""
        if self.check.count:
            self.check.fill("b", prompts_in(self.files, [entry[0] for entry in self.check.listed]))
            self.check.raise_if_any(file=self.output)


def prompts_in(paths: Iterable[str | os.PathLike[str]], ids: Iterable[str]) -> dict[str, str]:
    """The prompts of the records with ``ids`` in JSONL ``paths`` (first occurrence), read only to
    name them in an error; lines that are no record are passed over."""
    wanted = set(ids)
    found: dict[str, str] = {}
    for path in paths:
        if not wanted or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if isinstance(data, dict) and str(data.get("id")) in wanted and isinstance(data.get("prompt"), str):
                    found[str(data["id"])] = data["prompt"]
                    wanted.discard(str(data["id"]))
    return found
