"""Pictures of compiled graphs (``aidsafe.graph.draw``, ``aidsafe graph --format svg|png|html``):
fast, offline, no model (every graph is compiled with the fake backend, as the CLI does)."""

from __future__ import annotations

import shutil
import struct
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from aidsafe.cli import main
from aidsafe.errors import ConfigError
from aidsafe.graph import draw
from aidsafe.graph.compiler import CompiledAidsafe, compile_graph, exit_label
from aidsafe.graph.plan import word_exit
from aidsafe.graph.spec import load_graph_spec
from aidsafe.models import ModelSettings
from aidsafe.resources import builtin_dir, list_builtin

SVG = "{http://www.w3.org/2000/svg}"
SHIPPED = list_builtin("graphs")
LOOPED = [name for name in SHIPPED if any(node.loop is not None for node in load_graph_spec(name)[0].nodes.values())]
XMLNS = 'xmlns="http://www.w3.org/2000/svg"'
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def compiled_graph(graph: str | Path, policies: str | Path = "aidsafe5") -> CompiledAidsafe:
    return compile_graph(graph, policies, ModelSettings(backend="fake"))


def groups(root: ET.Element, cls: str) -> list[ET.Element]:
    """The ``<g>`` elements whose class list holds ``cls``."""
    return [g for g in root.iter(f"{SVG}g") if cls in (g.get("class") or "").split()]


def texts(element: ET.Element) -> list[str]:
    return [t.text or "" for t in element.iter(f"{SVG}text")]


def the_loop(compiled: CompiledAidsafe) -> tuple[str, Any]:
    return next((node_id, node.loop) for node_id, node in compiled.spec.nodes.items() if node.loop is not None)


def loop_members(compiled: CompiledAidsafe) -> set[str]:
    node_id, loop = the_loop(compiled)
    return {f"{node_id}_{a.name}" for a in loop.agent_list()} | ({f"{node_id}_vote"} if loop.mode == "parallel" else set())


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC, "not a PNG"
    assert data[12:16] == b"IHDR", "the first chunk of a PNG is IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_every_shipped_graph_is_covered() -> None:
    assert {"aidsafe", "roundtable", "single", "init_only", "ear_whisperer"} <= set(SHIPPED)
    assert {"aidsafe", "roundtable", "ear_whisperer"} <= set(LOOPED)


# --- SVG ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_graph_svg_has_one_group_per_langgraph_node_and_edge(name: str) -> None:
    compiled = compiled_graph(name)
    drawable = compiled.graph.get_graph()
    root = ET.fromstring(draw.svg(compiled))
    assert root.tag == f"{SVG}svg"
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    # __start__ and __end__ are drawn as nodes too: the data-node ids are exactly LangGraph's
    nodes = [g.get("data-node") for g in groups(root, "node")]
    assert Counter(nodes) == Counter(str(n) for n in drawable.nodes)
    edges = [(g.get("data-from"), g.get("data-to")) for g in groups(root, "edge")]
    assert Counter(edges) == Counter((str(e.source), str(e.target)) for e in drawable.edges)
    for g in groups(root, "edge"):
        assert g.find(f"{SVG}path") is not None and g.find(f"{SVG}polygon") is not None
    for g in groups(root, "node"):
        assert g.find(f"{SVG}rect") is not None
        if g.get("data-kind") not in ("start", "end"):
            assert texts(g)[0] == g.get("data-node"), "a node box shows its id first"


@pytest.mark.parametrize("name", SHIPPED)
def test_graph_svg_boxes_show_template_and_model(name: str) -> None:
    compiled = compiled_graph(name)
    root = ET.fromstring(draw.svg(compiled))
    by_id = {g.get("data-node"): texts(g) for g in groups(root, "node")}
    for node_id, node in compiled.spec.nodes.items():
        if node.role is not None:
            assert compiled.spec.roles[node.role].template in by_id[node_id]
            assert any(draw.model_label(compiled, node.role) in line for line in by_id[node_id])
        else:
            assert node.loop is not None
            for agent in node.loop.agent_list():
                lines = by_id[f"{node_id}_{agent.name}"]
                assert compiled.spec.roles[agent.role].template in lines
                assert any(draw.model_label(compiled, f"{node_id}.{agent.name}") in line for line in lines)
    title = " ".join(texts(groups(root, "title")[0]))
    assert compiled.spec.name in title and f"{compiled.policies.name}@{compiled.policies.version}" in title


@pytest.mark.parametrize("name", SHIPPED)
def test_graph_svg_is_standalone(name: str) -> None:
    text = draw.svg(compiled_graph(name))
    assert "<style>" in text
    assert "href" not in text and "url(" not in text and "<script" not in text.lower()
    assert text.replace(XMLNS, "").count("http") == 0


@pytest.mark.parametrize("name", LOOPED)
def test_graph_loop_labels_come_from_the_spec(name: str) -> None:
    compiled = compiled_graph(name)
    node_id, loop = the_loop(compiled)
    members = loop_members(compiled)
    root = ET.fromstring(draw.svg(compiled))
    (box,) = groups(root, "loop")
    assert box.get("data-loop") == node_id
    label = box.get("data-label") or ""
    shown = " ".join(texts(box))
    stops = {s for a in loop.agent_list() for s in compiled.bindings[f"{node_id}.{a.name}"].kind.stops}
    rule = loop.consensus or " or ".join(sorted(stops))
    assert rule, "a loop ends on a consensus rule or on a stop reason its agents give"
    for expected in (loop.mode, rule, f"budget {loop.max_rounds} rounds"):
        assert expected in label and expected in shown
    # the edges that leave the loop name the budget; those that stay in it say continue
    exits = [g for g in groups(root, "edge") if g.get("data-from") in members and g.get("data-to") not in members]
    stays = [g for g in groups(root, "edge") if g.get("data-from") in members and g.get("data-to") in members and g.get("data-kind") != "flow"]
    assert exits and stays
    for g in exits:
        assert g.get("data-kind") == "exit"
        assert f"{loop.max_rounds} rounds" in (g.get("data-label") or "")
    for g in stays:
        assert g.get("data-kind") == "continue"
    exit_texts = " ".join(texts(box) + [t for g in exits for t in texts(g)])
    assert f"{loop.max_rounds} rounds" in exit_texts, "the exit label is drawn, not only in an attribute"
    assert any("continue" in " ".join(texts(g) + texts(box)) for g in stays)


@pytest.mark.parametrize(("mode", "consensus", "rounds"), [("sequential", "first_agree", 7), ("parallel", "unanimous", 5), ("parallel", "majority", 11)])
def test_graph_loop_label_follows_an_edited_graph(tmp_path: Path, mode: str, consensus: str, rounds: int) -> None:
    agents = "replicas: 2\n      role: deliberator" if mode == "parallel" else "agents: [{name: a, role: deliberator}, {name: b, role: deliberator}]"
    graph = tmp_path / "mine.yaml"
    graph.write_text(
        "schema: aidsafe.graph/v1\nname: mine\n"
        "roles:\n  intent: {template: intent.jinja, reply: intents}\n  initializer: {template: initializer.jinja, reply: draft}\n"
        "  deliberator: {template: deliberator.jinja, reply: deliberation}\n  refiner: {template: refiner.jinja, reply: refinement}\n"
        "nodes:\n  intent: {role: intent}\n  init: {role: initializer}\n"
        f"  talk:\n    loop:\n      mode: {mode}\n      {agents}\n      max_rounds: {rounds}\n      consensus: {consensus}\n"
        "  refine: {role: refiner}\nflow: [intent, init, talk, refine]\n",
        encoding="utf-8",
    )
    root = ET.fromstring(draw.svg(compiled_graph(graph)))
    (box,) = groups(root, "loop")
    assert box.get("data-label") == f"deliberation loop: {mode}, exit on {consensus}, budget {rounds} rounds"
    exits = [g for g in groups(root, "edge") if g.get("data-kind") == "exit"]
    assert exits and all(g.get("data-to") == "refine" and f"budget of {rounds} rounds" in (g.get("data-label") or "") for g in exits)


def _edited(tmp_path: Path, name: str, *edits: tuple[str, str]) -> Path:
    text = (builtin_dir("graphs") / f"{name}.yaml").read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{name}_edited.yaml"
    path.write_text(text, encoding="utf-8")
    return path


EXIT_VARIANTS = {
    "at_least_after_min_rounds": ("roundtable", ("replicas: 3", "replicas: 5"), ("consensus: majority", "consensus: at_least\n      min_agree: 4\n      min_rounds: 1")),
    "first_agree_after_min_rounds": ("aidsafe", ("max_rounds: 3", "max_rounds: 3\n      min_rounds: 2")),
    "one_round": ("aidsafe", ("max_rounds: 3", "max_rounds: 1")),
}


@pytest.mark.parametrize("case", [*LOOPED, *EXIT_VARIANTS])
def test_the_exit_rule_reads_the_same_wherever_it_shows(tmp_path: Path, case: str) -> None:
    """One wording of a loop's exit rule (``word_exit``): the loop box, the vote box, the HTML page,
    the nodes' metadata, the exit edges of LangGraph, of the SVG and of the HTML page's picture."""
    if case in EXIT_VARIANTS:
        name, *edits = EXIT_VARIANTS[case]
        compiled = compiled_graph(_edited(tmp_path, name, *edits))
    else:
        compiled = compiled_graph(case)
    loop = compiled.plan.loop
    assert loop is not None
    words = loop.exit
    node_id, spec_loop = the_loop(compiled)
    assert loop.id == node_id and words == word_exit(spec_loop, words.stops)
    # the public helpers give the same words
    assert draw.exit_rule(spec_loop, words.stops) == words.rule
    assert draw.loop_label(spec_loop, words.stops) == words.label
    assert exit_label(spec_loop, words.stops) == words.edge
    assert words.rule and f"exit on {words.rule}," in words.label
    # the nodes' metadata
    for node in compiled.plan:
        metadata = compiled.graph.get_graph().nodes[node.id].metadata or {}
        assert metadata["aidsafe"]["exit"] == ({"rule": words.rule, "max_rounds": words.max_rounds, "min_rounds": words.min_rounds} if node.loop else None)
    # LangGraph's edges out of the loop
    drawable = compiled.graph.get_graph()
    leaving = [e for e in drawable.edges if e.source in loop.members and e.target not in loop.members]
    assert leaving and {e.data for e in leaving} == {words.edge}
    # the SVG, alone and in the HTML page
    picture = draw.svg(compiled)
    page = draw.html(compiled)
    assert picture in page
    root = ET.fromstring(picture)
    (box,) = groups(root, "loop")
    assert box.get("data-label") == words.label
    assert " ".join(texts(box)[:2]) == words.label  # drawn on two lines: "…, exit on RULE," / "budget …"
    exits = [g for g in groups(root, "edge") if g.get("data-kind") == "exit"]
    assert exits and {g.get("data-label") for g in exits} == {words.edge}
    head, _, tail = words.edge.rpartition(" or ")
    drawn = texts(box) + [t for g in exits for t in texts(g)]
    assert head in drawn and f"or {tail}" in drawn  # the exit edges' label, drawn on two lines under the loop box
    if loop.vote is not None:
        (vote,) = [g for g in groups(root, "node") if g.get("data-node") == loop.vote]
        assert f"vote: {words.rule}" in texts(vote)
    # the HTML page's loop table
    assert f"<tr><td>exit rule</td><td>{words.rule}</td></tr>" in page
    assert f"<tr><td>round budget</td><td>{words.budget}</td></tr>" in page
    assert words.budget.startswith(f"{words.max_rounds} rounds")


def test_graph_svg_highlight_marks_exactly_the_given_nodes() -> None:
    compiled = compiled_graph("roundtable")
    path = {"__start__", "intent", "init", "deliberate_agent_2", "deliberate_vote"}
    root = ET.fromstring(draw.svg(compiled, highlight=path))
    visited = {g.get("data-node") for g in groups(root, "node") if "visited" in (g.get("class") or "").split()}
    assert visited == path
    for g in groups(root, "node"):
        assert g.get("class") == ("node visited" if g.get("data-node") in path else "node")
    lit = {(g.get("data-from"), g.get("data-to")) for g in groups(root, "edge") if g.get("class") == "edge visited"}
    assert lit == {
        ("__start__", "intent"),
        ("intent", "init"),
        ("init", "deliberate_agent_2"),
        ("deliberate_agent_2", "deliberate_vote"),
        ("deliberate_vote", "deliberate_agent_2"),
    }
    assert all(g.get("class") in ("edge", "edge visited") for g in groups(root, "edge"))
    plain = ET.fromstring(draw.svg(compiled))
    assert not [g for g in plain.iter(f"{SVG}g") if "visited" in (g.get("class") or "")]


@pytest.mark.parametrize("name", SHIPPED)
def test_graph_layout_has_no_overlap_and_fits_the_canvas(name: str) -> None:
    lay = draw.layout(compiled_graph(name))
    boxes = lay.nodes
    for i, a in enumerate(boxes):
        assert 0 <= a.x and a.right <= lay.width and 0 <= a.y and a.bottom <= lay.height, a.id
        for b in boxes[i + 1 :]:
            apart = a.right <= b.x or b.right <= a.x or a.bottom <= b.y or b.bottom <= a.y
            assert apart, f"{a.id} overlaps {b.id}"
    labels = [*lay.title, *(label for n in boxes for label in n.labels), *(label for e in lay.edges for label in e.labels)]
    labels += lay.loop.labels if lay.loop else []
    for label in labels:
        x0, y0, x1, y1 = label.bbox()
        assert 0 <= x0 and x1 <= lay.width and 0 <= y0 and y1 <= lay.height, label.text
    for node in boxes:  # a box holds its text
        for label in node.labels:
            x0, _, x1, _ = label.bbox()
            assert node.x <= x0 and x1 <= node.right, label.text
    if lay.loop is not None:  # the loop box holds the loop's nodes, and nothing else
        loop = lay.loop
        members = loop_members(compiled_graph(name))
        for node in boxes:
            inside = loop.x <= node.x and node.right <= loop.x + loop.w and loop.y <= node.y and node.bottom <= loop.y + loop.h
            assert inside == (node.id in members), node.id


# --- escaping -------------------------------------------------------------------------------

EVIL = "<script>alert('x')</script>"


def evil_graph(tmp_path: Path) -> tuple[Path, Path]:
    """A graph and a policy pack whose free text (names, description, template folder, params,
    policy titles) is markup: the lower_snake_case role and node names cannot be."""
    folder = tmp_path / "<script>"
    folder.mkdir()
    shutil.copy(builtin_dir("prompts") / "single.jinja", folder / "single.jinja")
    graph = tmp_path / "evil.yaml"
    graph.write_text(
        "schema: aidsafe.graph/v1\n"
        f'name: "{EVIL}"\n'
        'description: "a & b </text><script>alert(1)</script>"\n'
        "roles:\n"
        "  single:\n"
        '    template: "<script>/single.jinja"\n'
        "    reply: draft\n"
        '    params: {note: "<img src=x onerror=alert(1)>"}\n'
        "nodes:\n  single: {role: single}\n"
        "flow: [single]\n",
        encoding="utf-8",
    )
    pack = tmp_path / "evil_pack.yaml"
    pack.write_text(
        f'schema: aidsafe.policies/v1\nname: "{EVIL}"\nversion: "1<b>"\npolicies:\n  - {{id: P1, title: "{EVIL}", text: "x"}}\n',
        encoding="utf-8",
    )
    return graph, pack


def test_graph_svg_and_html_escape_markup(tmp_path: Path) -> None:
    graph, pack = evil_graph(tmp_path)
    compiled = compiled_graph(graph, pack)
    assert compiled.spec.name == EVIL and compiled.policies.policies[0].title == EVIL
    picture = draw.svg(compiled)
    page = draw.html(compiled)
    for text in (picture, page):
        assert "<script" not in text.lower()
        assert "<img" not in text and "1<b>" not in text
        assert "&lt;script&gt;" in text and "1&lt;b&gt;" in text
    root = ET.fromstring(picture)  # the escaped text parses back to the names, inert
    assert EVIL in " ".join(texts(groups(root, "title")[0]))
    assert root.get("data-graph") == EVIL
    assert any("<script>/single.jinja" in t for g in groups(root, "node") for t in texts(g))
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


# --- PNG ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_graph_png_is_a_real_png(tmp_path: Path, name: str) -> None:
    target = tmp_path / f"{name}.png"
    assert draw.png(compiled_graph(name), target) == target
    width, height = png_size(target.read_bytes())
    assert 1000 <= width <= 1700
    lay = draw.layout(compiled_graph(name))
    assert abs(height / width - lay.height / lay.width) < 0.01, "the PNG has the layout's proportions"
    assert not [p for p in tmp_path.iterdir() if p != target], "no temporary file is left behind"


@pytest.mark.parametrize("name", ["aidsafe", "roundtable"])
def test_graph_png_is_drawn_from_the_svgs_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """One layout, computed once: the SVG and the PNG both draw it, and neither lays out again."""
    from matplotlib.patches import FancyBboxPatch

    compiled = compiled_graph(name)
    lay = draw.layout(compiled)
    fresh = tmp_path / "fresh.png"
    draw.png(compiled, fresh)

    def laid_out_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("a renderer laid the graph out a second time")

    monkeypatch.setattr("aidsafe.graph.draw._layout.layout", laid_out_again)
    picture = draw.svg(compiled, layout=lay)
    target = draw.png(compiled, tmp_path / "g.png", layout=lay)
    assert target.read_bytes() == fresh.read_bytes()  # the same picture as a PNG laid out on its own
    figure = draw.png_figure(lay)
    (axes,) = figure.axes
    assert axes.get_xlim() == (0, lay.width) and axes.get_ylim() == (lay.height, 0)  # the axes are the layout's pixels
    patches = [p for p in axes.patches if isinstance(p, FancyBboxPatch)]
    png_boxes = [(p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in patches if p.zorder == 3]
    assert png_boxes == [(n.x, n.y, n.w, n.h) for n in lay.nodes]  # exactly the layout's boxes
    assert lay.loop is not None
    (loop_patch,) = [p for p in patches if p.zorder == 1]
    assert (loop_patch.get_x(), loop_patch.get_y(), loop_patch.get_width(), loop_patch.get_height()) == (lay.loop.x, lay.loop.y, lay.loop.w, lay.loop.h)
    png_texts = [(t.get_text(), *t.get_position()) for t in axes.texts]
    layout_labels = [*lay.title, *lay.loop.labels, *(label for e in lay.edges for label in e.labels), *(label for n in lay.nodes for label in n.labels)]
    assert png_texts == [(label.text, label.x, label.y) for label in layout_labels]
    # the SVG's boxes are the same layout's (written to 0.1 pixel)
    root = ET.fromstring(picture)
    svg_boxes = [tuple(float(g.find(f"{SVG}rect").get(k) or "nan") for k in ("x", "y", "width", "height")) for g in groups(root, "node")]
    assert [g.get("data-node") for g in groups(root, "node")] == [n.id for n in lay.nodes]
    for svg_box, png_box in zip(svg_boxes, png_boxes, strict=True):
        assert svg_box == pytest.approx(png_box, abs=0.051)


def test_graph_png_highlight_changes_the_picture(tmp_path: Path) -> None:
    compiled = compiled_graph("aidsafe")
    plain, lit = tmp_path / "plain.png", tmp_path / "lit.png"
    draw.png(compiled, plain)
    draw.png(compiled, lit, highlight=["__start__", "intent", "init"])
    assert png_size(plain.read_bytes()) == png_size(lit.read_bytes())
    assert plain.read_bytes() != lit.read_bytes()


def test_graph_png_without_matplotlib_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'aidsafe\[plots\]'"):
        draw.png(compiled_graph("single"), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --- HTML -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_graph_html_is_self_contained(name: str) -> None:
    compiled = compiled_graph(name)
    page = draw.html(compiled)
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 1
    for role in compiled.spec.roles.values():
        assert f"<td>{role.template}</td>" in page
    for name, binding in compiled.bindings.items():
        assert f"<td>{binding.kind.name}</td>" in page and f"<td>{draw.model_label(compiled, name).replace(chr(39), '&#x27;')}</td>" in page
    for policy in compiled.policies.policies:
        assert f"<td>{policy.id}</td>" in page and policy.title.replace("'", "&#x27;") in page
    assert f"{compiled.policies.name}@{compiled.policies.version}" in page
    assert "<details><summary>Mermaid</summary><pre>" in page and "graph TD;" in page
    if name in LOOPED:
        _, loop = the_loop(compiled)
        assert f"<td>{loop.max_rounds} rounds</td>" in page and f"<td>{loop.mode}</td>" in page
        if loop.consensus:
            assert f"<td>{loop.consensus}" in page
    rest = page.replace(XMLNS, "", 1)
    assert "http://" not in rest and "https://" not in rest
    assert "<script" not in page.lower() and "<link" not in page.lower() and "src=" not in page


# --- CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["svg", "html", "png", "mermaid", "json"])
def test_graph_cli_writes_each_format(tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    target = tmp_path / f"roundtable.{fmt}"
    assert main(["graph", "roundtable", "--format", fmt, "-o", str(target)]) == 0
    assert capsys.readouterr().out == ""
    data = target.read_bytes()
    expected = {
        "svg": lambda: ET.fromstring(data).tag == f"{SVG}svg",
        "html": lambda: data.startswith(b"<!DOCTYPE html>") and b"<svg" in data,
        "png": lambda: png_size(data)[0] >= 1000,
        "mermaid": lambda: data.startswith(b"---") and b"graph TD;" in data,
        "json": lambda: b'"schema": "aidsafe.graph/v1"' in data,
    }[fmt]
    assert expected()


@pytest.mark.parametrize("fmt", ["svg", "html"])
def test_graph_cli_prints_svg_and_html(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    assert main(["graph", "aidsafe", "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert 'data-node="deliberate_agent_2"' in out
    if fmt == "svg":
        ET.fromstring(out)


def test_graph_cli_png_needs_an_output(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIDSAFE_GRAPH_OUTPUT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["graph", "single", "--format", "png"]) == 2
    captured = capsys.readouterr()
    assert "-o/--output" in captured.err and captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_graph_cli_draws_a_graph_whose_roles_name_real_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = tmp_path / "mixed.yaml"
    graph.write_text(
        (builtin_dir("graphs") / "roundtable.yaml")
        .read_text(encoding="utf-8")
        .replace("    reply: deliberation\n", "    reply: deliberation\n    model: meta-llama/Llama-3.1-70B-Instruct\n"),
        encoding="utf-8",
    )
    assert main(["graph", str(graph), "--format", "svg"]) == 0
    assert "meta-llama/Llama-3.1-70B-Instruct" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_graph_cli_reports_an_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    target = tmp_path / "no-such-folder" / f"g.{fmt}"
    assert main(["graph", "single", "--format", fmt, "-o", str(target)]) == 2
    assert f"cannot write {target}" in capsys.readouterr().err


def test_graph_boxes_name_the_models_a_run_uses() -> None:
    def intent_lines(svg_text: str) -> list[str]:
        root = ET.fromstring(svg_text)
        return next(texts(g) for g in groups(root, "node") if g.get("data-node") == "intent")

    served = compile_graph("aidsafe", "aidsafe5", ModelSettings(backend="openai", base_url="http://127.0.0.1:9/v1", model="mixtral"))
    assert any("openai:mixtral" in line for line in intent_lines(draw.svg(served)))
    drawn = draw.compile_to_draw("aidsafe")  # no run yet: the run's --model decides
    assert any("run's model" in line for line in intent_lines(draw.svg(drawn)))
    recorded = draw.svg(drawn, models={"intent": "local:SmolLM2"})  # e.g. a record's models
    assert any("local:SmolLM2" in line for line in intent_lines(recorded))
