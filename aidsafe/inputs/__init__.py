"""Read files of user prompts: JSON Lines, CSV, plain text, or a saved Hugging Face dataset.

Every reader streams its input: records are decoded, validated and yielded one at a
time, so only the set of ids already seen (to reject duplicates) grows with the file.
A record without an id field gets :func:`default_id` of its number in the file (1, 2, 3 ...:
non-blank lines, CSV data rows, dataset rows), the rule ``aidsafe import`` and the evaluation
data follow too, so one prompt of one file has one id whichever command reads it.
Problems are reported as :class:`~aidsafe.errors.InputError` naming the file, the
line (or dataset row) and the field at fault, so the user can fix the file at once.

Two modes:

- **strict** (the default): the first bad line raises, so a bad file is refused before
  any model call is spent on it (see :func:`count_prompts`).
- **lenient** (``lenient=True``): a bad *line* is skipped, its :class:`InputError` is
  appended to the caller's ``problems`` list, and the valid prompts still come out.
  Line-level problems are: invalid JSON, or a JSON value that is not an object; a
  missing prompt field; a prompt that is not a string, is empty or whitespace-only, or
  cannot be written as UTF-8 (a lone surrogate such as ``"\\ud800"``); a bad id; a
  duplicate id (the later record is skipped); undecodable bytes or a NUL byte on a
  line; a CSV row shorter than the header, or one the CSV parser rejects.
  *File-level* problems still raise in lenient mode: a missing file, a file without a
  single valid prompt, a CSV header that is blank, undecodable or lacks the prompt
  column, a CSV field over the csv module's size limit, and a dataset directory that
  cannot be loaded or lacks the prompt column.

Layout: one private module per format, each with one reader function
(``_jsonl.read_jsonl``, ``_csv.read_csv``, ``_text.read_text``,
``_dataset.read_dataset``); ``_common`` holds what they share (:class:`PromptItem`,
the spec of what to read, line decoding, record and id checks, the dedup, the problem
formatting); ``_read`` holds :func:`read_prompts`/:func:`count_prompts` and the
dispatch. The dispatch is a table, ``_read.READERS``, from the lower-cased file suffix
to the reader (``.jsonl``, ``.ndjson``, ``.json``: JSON Lines; ``.csv``: CSV); a
directory goes to ``_read.DIRECTORY_READER`` (a Hugging Face dataset) and any other
path to ``_read.DEFAULT_READER`` (plain text, one prompt per line). Adding a format is
one reader module (a function ``(path, spec) -> Iterator[PromptItem | InputError]``
built on ``_common``) and one entry in ``READERS``.
"""

from __future__ import annotations

from ._common import PromptItem, default_id, format_problems, report_problems
from ._read import count_prompts, read_prompts

__all__ = ["PromptItem", "count_prompts", "default_id", "format_problems", "read_prompts", "report_problems"]
