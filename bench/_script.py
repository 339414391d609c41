"""Run a module of the ``bench`` package given as a file: ``python bench/run.py`` is ``python -m bench.run``.

Python puts ``bench/`` itself first on ``sys.path`` when it runs a file in it, not the folder the
package lives in, so the file's ``from bench.x import ...`` would not resolve. A documented script
starts with::

    if __name__ == "__main__" and not __package__:  # python bench/run.py
        import _script

        _script.run_as_module("bench.run")

which loads the ``bench`` package from this folder (by its file, ``sys.path`` untouched apart from
taking ``bench/`` back off its front) and runs the module as ``__main__``, exactly as ``python -m``
does; it does not return.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys
from pathlib import Path
from typing import NoReturn

BENCH_DIR = Path(__file__).resolve().parent


def run_as_module(name: str) -> NoReturn:
    if sys.path and Path(sys.path[0] or ".").resolve() == BENCH_DIR:
        del sys.path[0]  # its modules are bench.*, never top-level modules
    if "bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench", BENCH_DIR / "__init__.py", submodule_search_locations=[str(BENCH_DIR)])
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = package
        spec.loader.exec_module(package)
    runpy.run_module(name, run_name="__main__", alter_sys=True)
    raise SystemExit(0)
