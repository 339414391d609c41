"""The quickstart notebook: its cells are there and run end to end with the fake model (no kernel needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def _cells() -> list[dict[str, Any]]:
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    return nb["cells"]


def _source(cell: dict[str, Any]) -> str:
    source = cell["source"]
    return "".join(source) if isinstance(source, list) else source


def test_notebook_has_the_described_cells() -> None:
    cells = _cells()
    markdown = [_source(c) for c in cells if c["cell_type"] == "markdown"]
    code = [_source(c) for c in cells if c["cell_type"] == "code"]
    assert markdown, "the notebook needs markdown"
    text = "\n".join(markdown)
    assert "SmolLM2-135M" in text
    assert 'backend="openai"' in text and "http://localhost:8000/v1" in text
    assert "aidsafe generate prompts.jsonl -o out.jsonl" in text

    def has(snippet: str) -> bool:
        return any(snippet in source for source in code)

    assert has('os.environ.get("AIDSAFE_BACKEND", "local")')
    assert has('Pipeline("aidsafe", "aidsafe5", settings)')
    assert has("pipe.mermaid()") and has("except ImportError")
    assert has('pipe.messages("agent_1"')
    assert has("records = pipe.run(prompts)")
    assert has("record.deliberation") and has("removed_thoughts") and has("record.usage")
    assert has('Pipeline("aidsafe", "llamaguard3", settings)')
    # the display call must be guarded so the cells also run without IPython
    graph_cell = next(source for source in code if "pipe.mermaid()" in source)
    assert graph_cell.index("try:") < graph_cell.index("display(")


def test_notebook_runs_with_fake_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AIDSAFE_BACKEND", "fake")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for index, cell in enumerate(_cells()):
        if cell["cell_type"] != "code":
            continue
        exec(compile(_source(cell), f"<quickstart cell {index}>", "exec"), namespace)
    out = capsys.readouterr().out

    records = namespace["records"]
    prompts = namespace["prompts"]
    assert len(prompts) == 3 and len(records) == 3
    assert sorted(r.prompt for r in records) == sorted(prompts)
    assert len({r.id for r in records}) == 3
    assert all(r.status in ("ok", "failed") for r in records)

    assert "deliberate_agent_1" in out  # the Mermaid graph
    assert "round 1" in out  # the deliberation trace
    assert "usage per stage" in out
    assert "S1" in out  # the llamaguard3 policy swap
    deliberated = namespace["deliberated"]  # min_rounds: the loop runs its 2 rounds
    assert deliberated.rounds == 2 and len(deliberated.deliberation) == 4 and "rounds: 2, turns: 4" in out


POLICY_NOTEBOOK = NOTEBOOK.parent / "policy_packs.ipynb"


def test_policy_pack_notebook_runs_with_fake_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The second notebook: the same prompts under two policy packs, the graph picture, the citations compared."""
    nb = json.loads(POLICY_NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
    monkeypatch.setenv("AIDSAFE_BACKEND", "fake")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            exec(compile(_source(cell), f"<policy_packs cell {index}>", "exec"), namespace)
    out = capsys.readouterr().out

    runs = namespace["runs"]
    prompts = namespace["prompts"]
    assert set(runs) == {"aidsafe5", "llamaguard3"}
    assert all([r.prompt for r in records] == prompts for records in runs.values())
    cited = {name: namespace["cited"](records) for name, records in runs.items()}
    assert cited["aidsafe5"] and all(p.startswith("P") for p in cited["aidsafe5"])
    assert cited["llamaguard3"] and all(p.startswith("S") for p in cited["llamaguard3"])
    assert namespace["picture"].startswith("<svg") and "llamaguard3" in namespace["picture"]
    assert "nodes" in out and "aidsafe5 | llamaguard3" in out
    for name in runs:
        page = (tmp_path / f"policy_{name}.html").read_text(encoding="utf-8")
        assert page.startswith("<!DOCTYPE html>") and f"policy_{name}.jsonl" in page
