"""The garbage collector while ``aidsafe`` imports.

Importing aidsafe and what it builds on (LangGraph, langchain-core, Pydantic) allocates hundreds of
thousands of objects that all live on, and Python's collector, set off by every 700 of them, runs
many full passes over them that free nothing: about 0.3 s of each start on the benchmark machine
(``python -c "import gc; gc.disable(); import aidsafe.cli, openai, langchain_openai"`` against the
same without ``gc.disable()``). The package's ``__init__`` turns the collector off while it imports
and :func:`done` restores it as it was, also when an import fails.

Turning it back on is not free either: the first collection after that walks every object the
import made, and the next older generations walk them again (about 0.25 s more before the first
model call of ``aidsafe generate``). When this process is the ``aidsafe`` command itself
(``python -m aidsafe`` or the ``aidsafe`` script), :func:`done` therefore freezes what the import
made (:func:`gc.freeze`: kept for good, never scanned), as ``aidsafe generate`` does again with
the client modules before a run. A program that imports aidsafe as a library keeps its collector
as it was: freezing would also keep that program's own garbage from before the import.
"""

from __future__ import annotations

import gc
import sys

_was_enabled = gc.isenabled()
gc.disable()


def launched_as_cli(argv0: str | None = None, orig_argv: list[str] | None = None) -> bool:
    """Whether this import is the start of the ``aidsafe`` command: ``python -m aidsafe`` (or a
    module of it; while Python imports the packages of the module it is about to run,
    ``sys.argv[0]`` is ``"-m"`` and ``sys.orig_argv`` names the module) or the ``aidsafe`` console
    script. ``python -m another_program`` that imports aidsafe is a program, not the command."""
    if argv0 is None:
        argv0 = sys.argv[0] if sys.argv else ""
    if argv0 == "-m":
        orig = sys.orig_argv if orig_argv is None else orig_argv
        at = orig.index("-m") + 1 if "-m" in orig else len(orig)
        module = orig[at] if at < len(orig) else ""
        return module == "aidsafe" or module.startswith("aidsafe.")
    name = argv0.replace("\\", "/").rsplit("/", 1)[-1].lower()  # either separator: a Windows script path too
    return name in ("aidsafe", "aidsafe.exe")


def done() -> None:
    """Turn the collector back on if it was on before ``aidsafe`` was imported; freeze the
    import's objects first when this process is the ``aidsafe`` command (see the module's doc)."""
    if launched_as_cli():
        gc.freeze()
    if _was_enabled:
        gc.enable()
