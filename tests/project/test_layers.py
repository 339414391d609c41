"""The package's layers: every module of ``aidsafe`` imports only from the layers below its own.

Each module is read with ``ast`` (nothing is imported), and every import counts: at the top of a
module, inside a function (a lazy import), or under ``TYPE_CHECKING``. A unit is a top-level
module or subpackage of ``aidsafe`` (``aidsafe/pairs/*`` is the unit ``pairs``); modules of one
unit may import each other freely. A unit may import units of lower layers only: never one of
its own layer (the units of a layer are independent of each other) and never one above (an
upward import).

A new unit, or a dependency that the order below forbids, is a decision: add the unit to
:data:`LAYERS`, or move the shared code down (as the judged pair, the pair metric and the DPO
export rule moved from ``judge`` into ``pairs.judged``), rather than importing upward.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "aidsafe"

LAYERS: list[set[str]] = [
    # foundations: they import nothing of aidsafe
    {"errors", "records", "kinds", "resources", "_concurrency", "_startup", "_stats", "testing"},
    {"_yaml", "inputs", "pairing", "refusals", "templates"},
    {"models", "outputs", "policies"},
    {"runner", "structured", "summary", "aidsafe_csv"},
    {"graph"},
    {"pipeline", "studio"},
    {"engines"},
    # preference pairs, with the judged pair and its rules (pairs/judged.py): below the judge
    {"pairs"},
    {"judge"},
    {"evals", "train", "viewer"},
    {"cli"},
    # the package's own __init__ (the public API, unit "aidsafe") and ``python -m aidsafe``
    {"aidsafe", "__main__"},
]
"""The declared order, lowest first."""

ROOT_NAMES_ALLOWED = {"__version__"}
"""Names any module may import from the package's ``__init__`` (they depend on nothing)."""


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports(root: Path) -> Iterator[tuple[str, int, str]]:
    """``(module, line, imported module)`` for every import of the package at ``root`` of a module
    of the same package, relative imports resolved."""
    files = {_module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    top = root.name
    for module, path in files.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                if node.module is not None:
                    targets = [target]
                else:  # from . import name: a submodule, or a name of the package itself
                    targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in files else target for a in node.names]
                if target == top and all(a.name in ROOT_NAMES_ALLOWED for a in node.names):
                    continue
            for target in targets:
                if target == top or target.startswith(top + "."):
                    yield module, node.lineno, target


def violations(root: Path, layers: list[set[str]]) -> list[str]:
    """Every import of a unit by a unit that is not in a higher layer, and every unit not in ``layers``."""
    rank = {unit: index for index, layer in enumerate(layers) for unit in layer}
    units = {_unit(_module_name(path, root)) for path in root.rglob("*.py")}
    problems = [f"unit {unit!r} is in no layer: add it to LAYERS" for unit in sorted(units - rank.keys())]
    for module, line, target in imports(root):
        mine, theirs = _unit(module), _unit(target)
        if mine == theirs or mine not in rank or theirs not in rank:
            continue
        if rank[theirs] >= rank[mine]:
            where = "its own layer" if rank[theirs] == rank[mine] else "a higher layer"
            problems.append(f"{module} (line {line}) imports {target}: {theirs!r} is in {where} than {mine!r}")
    return problems


def test_every_unit_imports_only_lower_layers() -> None:
    problems = violations(PACKAGE, LAYERS)
    assert not problems, "imports against the layer order (tests/project/test_layers.py):\n" + "\n".join(problems)


def test_layers_name_each_unit_once_and_only_units_that_exist() -> None:
    named = [unit for layer in LAYERS for unit in layer]
    assert len(named) == len(set(named))
    units = {_unit(_module_name(path, PACKAGE)) for path in PACKAGE.rglob("*.py")}
    assert set(named) == units


def test_pairs_never_import_the_judge() -> None:
    """The pair concepts (judged pair, pair metric, DPO export rule) live in pairs; the judge depends on them."""
    upward = [f"{module} (line {line}) imports {target}" for module, line, target in imports(PACKAGE)
              if _unit(module) == "pairs" and _unit(target) == "judge"]
    assert not upward


def test_the_checker_sees_relative_lazy_and_absolute_upward_imports(tmp_path: Path) -> None:
    root = tmp_path / "aidsafe"
    for folder in ("pairs", "judge"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("__version__ = '0'\n")
    (root / "judge" / "judge.py").write_text("from ..pairs import judged\nPAIR_METRIC = 'x'\n")
    (root / "pairs" / "judged.py").write_text("from __future__ import annotations\n")
    (root / "pairs" / "report.py").write_text(
        "from .. import __version__\n"
        "from ..judge.judge import PAIR_METRIC\n"
        "def f():\n    import aidsafe.judge\n"
        "from .. import judge\n"
    )
    found = violations(root, [{"pairs"}, {"judge"}, {"aidsafe"}])
    assert sorted(found) == [
        "aidsafe.pairs.report (line 2) imports aidsafe.judge.judge: 'judge' is in a higher layer than 'pairs'",
        "aidsafe.pairs.report (line 4) imports aidsafe.judge: 'judge' is in a higher layer than 'pairs'",
        "aidsafe.pairs.report (line 5) imports aidsafe.judge: 'judge' is in a higher layer than 'pairs'",
    ]
    assert violations(root, [{"judge"}, {"pairs"}, {"aidsafe"}]) == [  # the other order: the judge's import of pairs is the upward one
        "aidsafe.judge.judge (line 1) imports aidsafe.pairs: 'pairs' is in a higher layer than 'judge'",
    ]
    same = violations(root, [{"pairs", "judge"}, {"aidsafe"}])
    assert len(same) == 4 and all("in its own layer" in p for p in same)
    assert violations(root, [{"pairs"}, {"aidsafe"}]) == ["unit 'judge' is in no layer: add it to LAYERS"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("aidsafe.judge.schema:JudgedPair", "aidsafe.pairs.judged:JudgedPair"),
        ("aidsafe.judge.schema:PairJudgement", "aidsafe.pairs.judged:PairJudgement"),
        ("aidsafe.judge.schema:Judgement", "aidsafe.pairs.judged:Judgement"),
        ("aidsafe.judge.schema:Citations", "aidsafe.pairs.judged:Citations"),
        ("aidsafe.judge:Judgement", "aidsafe.pairs.judged:Judgement"),
        ("aidsafe.judge:Citations", "aidsafe.pairs.judged:Citations"),
        ("aidsafe.judge.judge:PAIR_METRIC", "aidsafe.pairs.judged:PAIR_METRIC"),
        ("aidsafe.pairs.report:in_dpo_export", "aidsafe.pairs.judged:in_dpo_export"),
        ("aidsafe.judge.stats:bootstrap_ci", "aidsafe._stats:bootstrap_ci"),
        ("aidsafe.judge:bootstrap_ci", "aidsafe._stats:bootstrap_ci"),
    ],
)
def test_moved_names_keep_their_old_import_paths(old: str, new: str) -> None:
    import importlib

    def load(spec: str) -> object:
        module, name = spec.split(":")
        return getattr(importlib.import_module(module), name)

    assert load(old) is load(new)


def test_the_pair_metric_is_one_of_the_judges_metrics() -> None:
    from aidsafe.judge.schema import METRICS
    from aidsafe.pairs.judged import PAIR_METRIC

    assert PAIR_METRIC in METRICS
