"""aidsafe's benchmarks (``bench/README.md``): the framework alone against the simulated
OpenAI-compatible server of :mod:`aidsafe.testing`, and the runs with a real model.

A package: its modules import each other as ``bench.x``. Run one as ``python -m bench.run ...``
from the repository's root, or as a file, ``python bench/run.py ...`` (see ``bench/_script.py``).
"""
