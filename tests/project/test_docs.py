"""The README and the pages in ``docs/`` hold to what they show.

Every line of a ``bash``, ``sh``, ``shell`` or ``console`` block is a command, and each one is

- run here, when it calls no model (``aidsafe graph``, ``validate``, ``render``, ``--help``,
  ``python bench/capacity.py``): in a scratch folder that sees the repository's files, with the
  files it names as the user's own (``my_graph.yaml``) made from shipped ones; it must exit 0 and
  write what ``-o`` names; a block without a language right after such a block is its output and
  must be exactly what the command prints;
- or listed in ``COVERED`` below with the file that runs it (a test, or ``.ci/run``), which must
  contain the string given; ``pip install`` of extras is covered when ``.ci/run`` installs them;
- or marked as not run here, with a reason: ``<!-- not run here: REASON -->`` on the line before
  the block (the whole block), or ``# not run here: REASON`` at the end of the line.

Anything else fails with ``file:line``. Also: every relative link and image points to a file that
exists (and an anchor to a heading of that page), every page is in ``mkdocs.yml``'s navigation,
the README's command table is the one in ``docs/commands.md``, the Mermaid edges in
``docs/graphs.md`` are those ``aidsafe graph aidsafe`` prints, the picture ``docs/aidsafe.svg``
has the nodes and edges a fresh drawing has, and, where MkDocs is installed (extra ``[docs]``), the
site builds with ``--strict``.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
COMMAND_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}
NOT_RUN_BLOCK = re.compile(r"<!--\s*not run here:\s*(?P<why>\S.*?)\s*-->")
NOT_RUN_LINE = re.compile(r"#\s*not run here:\s*\S")

# Commands run elsewhere: (pattern matched against the command's words joined by one space, the file
# that runs it, a string that file must contain, what that file does with it).
COVERED: list[tuple[str, str, str, str]] = [
    (r"python -m pytest -q", ".ci/run", "python -m pytest -q", "CI's test run"),
    (r"ruff check aidsafe", ".ci/run", "ruff check aidsafe", "CI's lint"),
    (r"pyright", ".ci/run", "pyright", "CI's type check"),
    (r"mkdocs build --strict( -d \S+)?", ".ci/run", "mkdocs build --strict", "CI's docs build (and test_the_site_builds_strict here)"),
    (r"aidsafe generate examples/prompts\.jsonl -o out\.jsonl", "tests/e2e/test_e2e_local.py", '"generate"',
     "aidsafe generate on the embedded model, in a subprocess, on prompts of its own"),
    (r"langgraph dev", "tests/core/test_langgraph_dev.py", '"dev"', "starts langgraph dev on localhost and runs every shipped graph through it"),
]


@dataclass
class Block:
    page: Path
    line: int  # the opening fence's line, from 1
    language: str
    lines: list[str]  # the body, its fence's indentation removed
    not_run: str | None  # the reason of a <!-- not run here: ... --> on the line before

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass
class Command:
    block: Block
    line: int
    text: str  # continuation lines joined, with its comment
    argv: list[str]  # without the comment

    @property
    def where(self) -> str:
        return f"{self.block.page.relative_to(ROOT)}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        opening = re.match(r"^( *)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, language = opening.groups()
        body, j = [], i + 1
        while j < len(lines) and not re.fullmatch(rf" *{fence[0]}{{{len(fence)},}}\s*", lines[j]):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        marker = NOT_RUN_BLOCK.search(lines[i - 1]) if i else None
        blocks.append(Block(page, i + 1, language.lower(), body, marker.group("why") if marker else None))
        i = j + 1
    return blocks


def block_commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    text, start = "", 0
    for number, raw in enumerate(block.lines, start=block.line + 1):
        line = raw.rstrip()
        if block.language == "console":
            if not text:
                if not line.startswith("$ "):
                    continue  # output
                line = line[2:]
        if not text:
            start = number
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        if line.endswith("\\"):
            text += line[:-1] + " "
            continue
        text += line
        commands.append(Command(block, start, text.strip(), shlex.split(text, comments=True)))
        text = ""
    assert not text, f"{block.where}: a command ends in a line continuation"
    return commands


ALL_BLOCKS = [block for page in PAGES for block in read_blocks(page)]
COMMAND_BLOCKS = [block for block in ALL_BLOCKS if block.language in COMMAND_LANGUAGES]
ALL_COMMANDS = [command for block in COMMAND_BLOCKS for command in block_commands(block)]


def is_runnable(argv: list[str]) -> bool:
    """Commands that call no model and write at most their ``-o`` file."""
    if argv[:1] == ["aidsafe"]:
        return len(argv) > 1 and (argv[1] in {"graph", "validate", "render"} or argv[-1] in {"--help", "-h"})
    return argv[:2] == ["python", "bench/capacity.py"] and "--summary" not in argv


def ci_extras() -> set[str]:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    return {extra for group in re.findall(r"pip install -e '\.\[([\w,]+)\]'", ci) for extra in group.split(",")}


def covered_by(command: Command) -> str | None:
    """Where a command that is not run here is run, or None."""
    words = " ".join(command.argv)
    install = re.fullmatch(r"pip install (?:-e )?(?:\.|aidsafe)\[([\w,]+)\]", words)
    if install:
        missing = set(install.group(1).split(",")) - ci_extras()
        assert not missing, f"{command.where}: .ci/run does not install the extras {sorted(missing)}: {command.text}"
        return ".ci/run"
    for pattern, file, needle, _ in COVERED:
        if re.fullmatch(pattern, words):
            assert (ROOT / file).is_file(), f"{command.where}: {file} (COVERED) is not a file"
            assert needle in (ROOT / file).read_text(encoding="utf-8"), f"{command.where}: {file} does not contain {needle!r}"
            return file
    return None


def test_the_pages_have_command_blocks_to_check() -> None:
    assert len(PAGES) >= 15 and len(COMMAND_BLOCKS) >= 20 and len(ALL_COMMANDS) >= 50
    assert any(is_runnable(c.argv) for c in ALL_COMMANDS)


def test_every_command_is_run_covered_or_marked() -> None:
    unknown = []
    for command in ALL_COMMANDS:
        if command.block.not_run is not None or NOT_RUN_LINE.search(command.text):
            continue
        if is_runnable(command.argv) or covered_by(command):
            continue
        unknown.append(f"{command.where}: {command.text}")
    assert not unknown, (
        "commands neither run by a test, listed in tests/project/test_docs.py's COVERED, nor marked "
        "'<!-- not run here: REASON -->' / '# not run here: REASON':\n" + "\n".join(unknown)
    )


def test_blocks_that_look_like_commands_have_a_shell_language() -> None:
    outputs = {id(after) for before, after in itertools.pairwise(ALL_BLOCKS) if output_of(before, after)}
    looks = re.compile(r"(\$ |aidsafe |pip |python |vllm |mkdocs |langgraph |curl |inspect )")
    wrong = [b.where for b in ALL_BLOCKS if not b.language and id(b) not in outputs and b.lines and looks.match(b.lines[0])]
    assert not wrong, f"blocks of commands without the language bash: {wrong}"


def test_a_not_run_block_says_why() -> None:
    for page in PAGES:
        for number, line in enumerate(page.read_text(encoding="utf-8").split("\n"), start=1):
            if "not run here" in line and ("<!--" in line or line.lstrip().startswith("#") or "  #" in line):
                assert re.search(r"not run here:\s*\S.{2,}", line), f"{page.relative_to(ROOT)}:{number}: no reason given"


# --- the commands run here ---------------------------------------------------------------------

RUNNABLE = [c for c in ALL_COMMANDS if c.block.not_run is None and not NOT_RUN_LINE.search(c.text) and is_runnable(c.argv)]


def output_of(before: Block, after: Block) -> bool:
    """``after`` is ``before``'s output: no language, nothing but blank lines between them."""
    if after.language or before.page != after.page or before.language not in COMMAND_LANGUAGES:
        return False
    lines = before.page.read_text(encoding="utf-8").split("\n")
    between = lines[before.line + len(before.lines) + 1 : after.line - 1]
    return not any(line.strip() for line in between)


def expected_output(block: Block) -> str | None:
    index = next(i for i, b in enumerate(ALL_BLOCKS) if b is block)
    if index + 1 < len(ALL_BLOCKS) and output_of(block, ALL_BLOCKS[index + 1]):
        return "\n".join(ALL_BLOCKS[index + 1].lines)
    return None


@pytest.fixture()
def scratch(tmp_path: Path) -> Path:
    """A folder where the repository's files are at hand and the user's own files exist."""
    for entry in ROOT.iterdir():
        if entry.name not in {"docs", ".git", ".venv"} and not entry.name.startswith("out"):
            (tmp_path / entry.name).symlink_to(entry)
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "graphs" / "aidsafe.yaml", tmp_path / "my_graph.yaml")  # "a graph file of your own"
    return tmp_path


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    program = {"aidsafe": [sys.executable, "-m", "aidsafe"], "python": [sys.executable]}[argv[0]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    return subprocess.run([*program, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("command", RUNNABLE, ids=[c.where for c in RUNNABLE])
def test_the_commands_that_call_no_model_run(command: Command, scratch: Path) -> None:
    argv = command.argv
    if "png" in argv and importlib.util.find_spec("matplotlib") is None:
        pytest.skip("a PNG needs matplotlib (extra [plots])")
    done = _run(argv, scratch)
    assert done.returncode == 0, f"{command.where}: {command.text}\nexit {done.returncode}\n{done.stderr[-3000:]}"
    for flag in ("-o", "--output"):
        if flag in argv:
            written = scratch / argv[argv.index(flag) + 1]
            assert written.is_file() and written.stat().st_size > 0, f"{command.where}: {written.name} not written"
    expected = expected_output(command.block)
    if expected is not None:
        assert len(block_commands(command.block)) == 1, f"{command.block.where}: an output block follows several commands"
        shown = [line.rstrip() for line in expected.rstrip("\n").split("\n")]
        printed = [line.rstrip() for line in done.stdout.rstrip("\n").split("\n")]
        assert printed == shown, f"{command.where}: the block after it is not what it prints now"


# --- links, navigation, duplicated content ------------------------------------------------------


def slugify(heading: str) -> str:
    """Python-Markdown's ``toc`` anchor of a heading (what MkDocs links to)."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[*_]{1,2}([^*_]+)[*_]{1,2}", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def prose(page: Path) -> list[tuple[int, str]]:
    """The page's lines outside code blocks, inline code blanked."""
    out, fence = [], None
    for number, line in enumerate(page.read_text(encoding="utf-8").split("\n"), start=1):
        opening = re.match(r"^ *(`{3,}|~{3,})", line)
        if opening and (fence is None or opening.group(1).startswith(fence)):
            fence = None if fence else opening.group(1)
            continue
        if fence is None:
            out.append((number, re.sub(r"`[^`]*`", "``", line)))
    return out


def anchors(page: Path) -> set[str]:
    return {slugify(line.lstrip("#").strip()) for _, line in prose(page) if re.match(r"#{1,6} ", line)}


def test_every_relative_link_points_to_a_file_and_anchor_that_exist() -> None:
    broken = []
    for page in PAGES:
        for number, line in prose(page):
            for target in re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", line):
                if re.match(r"[a-z][a-z0-9+.-]*:", target):
                    continue  # http:, https:, mailto:
                path, _, anchor = target.partition("#")
                file = (page.parent / path).resolve() if path else page
                where = f"{page.relative_to(ROOT)}:{number}: {target}"
                if not file.exists():
                    broken.append(f"{where} (no such file)")
                elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                    broken.append(f"{where} (no heading with that anchor)")
    assert not broken, "\n".join(broken)


class _Loader(yaml.SafeLoader):
    """mkdocs.yml's ``!!python/name:`` tags read as nothing."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def _nav_pages(entries: object) -> list[str]:
    if isinstance(entries, str):
        return [entries]
    if isinstance(entries, list):
        return [page for entry in entries for page in _nav_pages(entry)]
    if isinstance(entries, dict):
        return [page for value in entries.values() for page in _nav_pages(value)]
    return []


def test_every_page_is_in_the_navigation() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)
    nav = _nav_pages(config["nav"])
    assert len(nav) == len(set(nav)), "a page is twice in mkdocs.yml's nav"
    assert sorted(nav) == sorted(p.name for p in DOCS.glob("*.md")), "docs/*.md and mkdocs.yml's nav differ"
    assert nav[0] == "index.md"


def _first_table_after(text: str, heading: str) -> list[str]:
    lines = text.split("\n")
    start = lines.index(heading)
    table = []
    for line in lines[start:]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return table


def test_the_readme_command_table_is_the_commands_page_table() -> None:
    readme = _first_table_after((ROOT / "README.md").read_text(encoding="utf-8"), "## Commands")
    page = _first_table_after((DOCS / "commands.md").read_text(encoding="utf-8"), "## The commands")
    assert len(readme) > 15 and readme == page


def _edges(mermaid: str) -> set[str]:
    edges = set()
    for line in mermaid.split("\n"):
        if "-->" in line or ".->" in line:
            edges.add(re.sub(r"\s+", " ", line.replace("&nbsp;", " ")).strip().rstrip(";").strip())
    return edges


def test_the_mermaid_edges_in_the_docs_are_what_aidsafe_graph_prints(tmp_path: Path) -> None:
    [block] = [b for b in read_blocks(DOCS / "graphs.md") if b.language == "mermaid"]
    done = _run(["aidsafe", "graph", "aidsafe"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert _edges("\n".join(block.lines)) == _edges(done.stdout)
    assert len(_edges(done.stdout)) == 8


def _drawing(svg: str) -> tuple[set[str], set[tuple[str, str, str]]]:
    nodes = set(re.findall(r'data-node="([^"]+)"', svg))
    edges = set(re.findall(r'data-from="([^"]+)"[^>]*data-to="([^"]+)"[^>]*data-kind="([^"]+)"', svg))
    return nodes, edges


def test_the_readme_picture_is_the_graph_aidsafe_draws(tmp_path: Path) -> None:
    picture = DOCS / "aidsafe.svg"
    assert "](docs/aidsafe.svg)" in (ROOT / "README.md").read_text(encoding="utf-8")
    done = _run(["aidsafe", "graph", "aidsafe", "--format", "svg", "-o", str(tmp_path / "fresh.svg")], tmp_path)
    assert done.returncode == 0, done.stderr
    committed = _drawing(picture.read_text(encoding="utf-8"))
    assert committed[0] >= {"intent", "init", "deliberate_agent_1", "deliberate_agent_2", "refine"}
    assert committed == _drawing((tmp_path / "fresh.svg").read_text(encoding="utf-8")), (
        "docs/aidsafe.svg is out of date: aidsafe graph aidsafe --format svg -o docs/aidsafe.svg"
    )


def test_the_readme_is_short() -> None:
    assert (ROOT / "README.md").read_text(encoding="utf-8").count("\n") <= 250


@pytest.mark.requires_extras("mkdocs", "material", extra="the [docs] extra (mkdocs-material)")
def test_the_site_builds_strict(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "aidsafe.svg").is_file()
