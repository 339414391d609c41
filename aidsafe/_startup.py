"""The garbage collector while ``aidsafe`` imports.

Importing aidsafe and what it builds on (LangGraph, langchain-core, Pydantic) allocates hundreds of
thousands of objects that all live on, and Python's collector, set off by every 700 of them, runs
many full passes over them that free nothing: about 0.3 s of each start on the benchmark machine
(``python -c "import gc; gc.disable(); import aidsafe.cli, openai, langchain_openai"`` against the
same without ``gc.disable()``). The package's ``__init__`` turns the collector off while it imports
and :func:`done` restores it as it was, also when an import fails.
"""

from __future__ import annotations

import gc

_was_enabled = gc.isenabled()
gc.disable()


def done() -> None:
    """Turn the collector back on if it was on before ``aidsafe`` was imported."""
    if _was_enabled:
        gc.enable()
