"""MkDocs hook: a table cell's inline code may hold ``\\|``, which GitHub needs there to keep the
pipe out of the table's columns; Python-Markdown never splits a row inside inline code and would
show the backslash, so the site gets the bare pipe."""

from __future__ import annotations

import re
from typing import Any

_CODE = re.compile(r"`[^`\n]*`")


def on_page_markdown(markdown: str, **_: Any) -> str:
    lines = markdown.split("\n")
    for i, line in enumerate(lines):
        if line.lstrip().startswith("|") and "\\|" in line:
            lines[i] = _CODE.sub(lambda m: m.group(0).replace("\\|", "|"), line)
    return "\n".join(lines)
