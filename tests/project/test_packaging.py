"""The wheel ships the graphs, prompts and policies under ``aidsafe/_data`` and works from there."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = [
    "aidsafe/__init__.py",
    "aidsafe/__main__.py",
    "aidsafe/cli/__init__.py",
    "aidsafe/_data/graphs/aidsafe.yaml",
    "aidsafe/_data/graphs/roundtable.yaml",
    "aidsafe/_data/graphs/single.yaml",
    "aidsafe/_data/prompts/intent.jinja",
    "aidsafe/_data/prompts/initializer.jinja",
    "aidsafe/_data/prompts/deliberator.jinja",
    "aidsafe/_data/prompts/refiner.jinja",
    "aidsafe/_data/prompts/single.jinja",
    "aidsafe/_data/graphs/ear_whisperer.yaml",
    "aidsafe/_data/prompts/whisperer.jinja",
    "aidsafe/_data/prompts/target.jinja",
    "aidsafe/_data/prompts/scorer.jinja",
    "aidsafe/_data/prompts/eval_safety.jinja",
    "aidsafe/_data/prompts/eval_cot.jinja",
    "aidsafe/_data/prompts/jailbreaks.yaml",
    "aidsafe/_data/policies/aidsafe5.yaml",
    "aidsafe/_data/policies/llamaguard3.yaml",
    "aidsafe/viewer/assets/report.css",
    "aidsafe/viewer/assets/report.js",
    "aidsafe/testing/__init__.py",  # the simulated server users test their own graphs against
    "aidsafe/testing/_sim.py",
    "aidsafe/graph/plan.py",
    "aidsafe/graph/draw/__init__.py",
    "aidsafe/graph/draw/_layout.py",
    "aidsafe/graph/draw/_svg.py",
    "aidsafe/graph/draw/_png.py",
    "aidsafe/graph/draw/_html.py",
]


def _build(dest: Path) -> Path:
    base = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dest)]
    # Without build isolation when hatchling is installed; else let pip fetch it into an isolated env.
    attempts = [base + ["--no-build-isolation", str(ROOT)], base + [str(ROOT)]]
    errors = []
    for cmd in attempts:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        wheels = sorted(dest.glob("aidsafe-*.whl"))
        if proc.returncode == 0 and wheels:
            return wheels[0]
        errors.append(f"{' '.join(cmd)}\n{proc.stderr[-2000:]}")
    pytest.fail("could not build the wheel:\n" + "\n\n".join(errors))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("wheelhouse"))


def test_wheel_contains_package_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        missing = [name for name in EXPECTED if name not in names]
        assert not missing, f"missing from {wheel.name}: {missing}"
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        declared = zf.read(entry_points).decode()
        assert "aidsafe = aidsafe.cli:main" in declared
        assert "[inspect_ai]\naidsafe = aidsafe.evals._registry" in declared  # inspect eval aidsafe/<task> finds the tasks
        # the data lives only under aidsafe/_data, not as stray top-level folders
        assert not any(n.split("/")[0] in {"graphs", "prompts", "policies"} for n in names)


def test_unzipped_wheel_uses_packaged_data(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import aidsafe
        from aidsafe.resources import builtin_dir
        site = Path({str(site)!r}).resolve()
        assert Path(aidsafe.__file__).resolve().is_relative_to(site), aidsafe.__file__
        for kind in ("graphs", "prompts", "policies"):
            assert builtin_dir(kind).resolve() == site / "aidsafe" / "_data" / kind, builtin_dir(kind)
        compiled = aidsafe.compile_graph("aidsafe", "llamaguard3")
        assert Path(compiled.path).resolve().is_relative_to(site / "aidsafe" / "_data"), compiled.path
        assert compiled.policies.name == "llamaguard3"
        assert compiled.policies.ids[0] == "S1"
        print(compiled.mermaid())
        from aidsafe.viewer.build import _asset
        assert "aidsafe-data" in _asset("report.js") and ".picture" in _asset("report.css")  # the report page's own files
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIDSAFE_")}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "deliberate_agent_1" in proc.stdout
    assert "first_agree or budget of 3 rounds" in proc.stdout
