"""Tests for the graph file format (aidsafe.graph.spec) and its compilation to LangGraph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aidsafe import ModelSettings, Pipeline
from aidsafe.errors import ConfigError
from aidsafe.graph.compiler import compile_graph, exit_label
from aidsafe.graph.plan import METADATA_KEY, plan_graph
from aidsafe.graph.spec import load_graph_spec
from aidsafe.resources import builtin_dir, list_builtin

AIDSAFE_FLOW = "flow: [intent, init, deliberate, refine]"


def _shipped(name: str) -> str:
    return (builtin_dir("graphs") / f"{name}.yaml").read_text(encoding="utf-8")


def _variant(tmp_path: Path, name: str, *edits: tuple[str, str], filename: str = "graph.yaml") -> Path:
    """Copy a shipped graph into tmp_path, applying (old, new) edits that must each match."""
    text = _shipped(name)
    for old, new in edits:
        assert old in text, f"edit target {old!r} not in shipped {name}.yaml"
        text = text.replace(old, new)
    path = tmp_path / filename
    path.write_text(text, encoding="utf-8")
    return path


def _line_of(path: Path, needle: str) -> int:
    """1-based number of the only line of ``path`` containing ``needle``."""
    hits = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def _error(path: Path, **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_graph(path, **kwargs)  # type: ignore[arg-type]
    err = info.value
    assert err.file == str(path)
    assert err.line is not None
    return err


def _nodes(compiled: object) -> set[str]:
    return set(compiled.graph.get_graph().nodes) - {"__start__", "__end__"}  # type: ignore[attr-defined]


# --- shipped graphs ---------------------------------------------------------------------


def test_aidsafe_graph_nodes_and_budget() -> None:
    compiled = compile_graph("aidsafe")
    assert _nodes(compiled) == {"intent", "init", "deliberate_agent_1", "deliberate_agent_2", "refine"}
    # 3 role nodes + 2 agents x 3 rounds, plus the entry: every execution of a full-budget run
    assert compiled.recursion_limit >= 3 + 2 * 3 + 1
    assert compiled.spec.name == "aidsafe"


def test_roundtable_graph_nodes_and_budget() -> None:
    compiled = compile_graph("roundtable")
    assert _nodes(compiled) == {
        "intent",
        "init",
        "deliberate_agent_1",
        "deliberate_agent_2",
        "deliberate_agent_3",
        "deliberate_vote",
        "refine",
    }
    # 3 role nodes + (3 agents + vote) x 2 rounds node executions (super-steps are fewer)
    assert compiled.recursion_limit >= 3 + (3 + 1) * 2


def test_single_graph_nodes() -> None:
    compiled = compile_graph("single")
    assert _nodes(compiled) == {"single"}
    assert compiled.recursion_limit >= 1
    assert list(compiled.bindings) == ["single"]


@pytest.mark.parametrize("name", ["aidsafe", "roundtable", "init_only", "single"])
def test_shipped_graph_loads_by_name_and_path(name: str) -> None:
    spec, path = load_graph_spec(name)
    assert spec.name == name
    assert path == builtin_dir("graphs") / f"{name}.yaml"
    spec2, _ = load_graph_spec(path)
    assert spec2 == spec


@pytest.mark.parametrize("name,agents,rounds", [("aidsafe", 2, 3), ("roundtable", 3, 2)])
def test_full_budget_run_fits_recursion_limit(name: str, agents: int, rounds: int) -> None:
    pipe = Pipeline(name, settings=ModelSettings(backend="fake", model="never-agree"))
    record = pipe.run_one("How do I pick a lock?")
    assert record.status == "ok", record.error
    assert record.stop_reason == "budget"
    assert record.rounds == rounds
    assert len(record.deliberation) == agents * rounds


def test_max_rounds_changes_recursion_limit(tmp_path: Path) -> None:
    shipped = compile_graph("aidsafe").recursion_limit
    five = compile_graph(_variant(tmp_path, "aidsafe", ("max_rounds: 3", "max_rounds: 5"), filename="five.yaml"))
    one = compile_graph(_variant(tmp_path, "aidsafe", ("max_rounds: 3", "max_rounds: 1"), filename="one.yaml"))
    assert one.recursion_limit < shipped < five.recursion_limit
    assert five.recursion_limit - shipped == 2 * 2  # 2 agents x 2 more rounds
    assert five.recursion_limit >= 3 + 2 * 5 + 1


def test_mermaid_shows_loop_exit_and_continue() -> None:
    text = compile_graph("aidsafe").mermaid()
    assert "first_agree or budget of 3 rounds" in text
    assert "continue" in text
    assert "deliberate_agent_1" in text and "refine" in text
    rt = compile_graph("roundtable").mermaid()
    assert "majority or budget of 2 rounds" in rt
    assert "next round: deliberate_agent_1" in rt


# --- the plan: one entry per LangGraph node ----------------------------------------------

SHIPPED = list_builtin("graphs")


def test_every_graph_file_is_shipped() -> None:
    assert sorted(SHIPPED) == sorted(p.stem for p in builtin_dir("graphs").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_the_plan_matches_the_compiled_nodes_one_to_one(name: str) -> None:
    compiled = compile_graph(name, settings=ModelSettings(backend="fake"))
    plan = compiled.plan
    langgraph_ids = [str(n) for n in compiled.graph.get_graph().nodes if n not in ("__start__", "__end__")]
    assert plan.ids == langgraph_ids  # the same nodes, in the same order
    assert len(set(plan.ids)) == len(plan)
    assert plan == plan_graph(compiled.spec).bound(compiled.bindings)  # made from the spec (and the bound models) only
    assert {node.flow for node in plan} == set(compiled.spec.flow)
    for node in plan:
        spec_node = compiled.spec.nodes[node.flow]
        if node.kind == "role":
            assert node.id == node.flow == node.stage and node.role == spec_node.role and node.loop is None and node.exit is None
        else:
            assert spec_node.loop is not None and node.loop == node.flow and plan.loop is not None and node.exit == plan.loop.exit
            assert node.id in plan.loop.members
        if node.kind == "agent":
            assert spec_node.loop is not None and node.index is not None
            agent = spec_node.loop.agent_list()[node.index]
            assert (node.agent, node.role) == (agent.name, agent.role)
        if node.binding is None:
            assert node.kind == "vote"
            continue
        binding = compiled.bindings[node.binding.name]
        assert binding.role == node.role and binding.name == (node.agent or node.role)
        assert node.binding.template == compiled.spec.roles[binding.role].template
        assert (node.binding.reply, node.binding.model) == (binding.kind.name, binding.settings.label())
    assert [n.binding.name for n in plan if n.binding is not None] == list(compiled.bindings)
    assert compiled.models == {n.binding.name: n.binding.model for n in plan if n.binding is not None}


@pytest.mark.parametrize("name", SHIPPED)
def test_each_langgraph_node_carries_its_plan_entry_as_metadata(name: str) -> None:
    compiled = compile_graph(name, settings=ModelSettings(backend="fake"))
    drawable = compiled.graph.get_graph()
    for node in compiled.plan:
        metadata = drawable.nodes[node.id].metadata
        assert metadata == node.metadata()
        assert metadata is not None
        entry = metadata[METADATA_KEY]
        assert (entry["node"], entry["kind"], entry["stage"], entry["role"], entry["agent"], entry["loop"]) == (
            node.id, node.kind, node.stage, node.role, node.agent, node.loop,
        )
        if node.binding is not None:
            assert entry["binding"] == {"name": node.binding.name, "template": node.binding.template, "reply": node.binding.reply, "model": node.binding.model}
        if node.exit is not None:
            assert entry["exit"]["rule"] == node.exit.rule and entry["exit"]["max_rounds"] == node.exit.max_rounds
        assert compiled.graph.nodes[node.id].metadata == metadata  # what LangGraph merges into each run of the node
    assert drawable.nodes["__start__"].metadata is None and drawable.nodes["__end__"].metadata is None
    json.dumps(drawable.to_json())  # plain JSON values: the graph's JSON (served by langgraph dev) carries them
    # Mermaid prints scalar metadata into node labels; the entry is one mapping, so the Mermaid text is as before
    assert "<hr/>" not in compiled.mermaid()


@pytest.mark.parametrize(("name", "agents"), [("aidsafe", 2), ("roundtable", 3)])
def test_records_name_the_plans_stages(name: str, agents: int) -> None:
    pipe = Pipeline(name, settings=ModelSettings(backend="fake", model="never-agree"))
    record = pipe.run_one("How do I pick a lock?")
    plan = pipe.compiled.plan
    assert set(record.usage) == {node.flow for node in plan}
    assert {turn.agent for turn in record.deliberation} == {node.agent for node in plan if node.kind == "agent"}
    assert len({node.agent for node in plan if node.kind == "agent"}) == agents
    assert [node.stage for node in plan if node.kind == "agent"] == [f"deliberate/agent_{i}" for i in range(1, agents + 1)]
    assert record.models == {node.binding.name: node.binding.model for node in plan if node.binding is not None}


# --- new topologies are only a file -----------------------------------------------------


def test_parallel_replicas_at_least_compiles(tmp_path: Path) -> None:
    path = _variant(
        tmp_path,
        "roundtable",
        ("replicas: 3", "replicas: 5"),
        ("consensus: majority", "consensus: at_least\n      min_agree: 4"),
    )
    compiled = compile_graph(path)
    assert {f"deliberate_agent_{i}" for i in range(1, 6)} | {"deliberate_vote"} <= _nodes(compiled)
    loop = compiled.spec.nodes["deliberate"].loop
    assert loop is not None and not loop.agreed(3) and loop.agreed(4)
    assert exit_label(loop) == "at_least 4 of 5 or budget of 2 rounds"
    # Mermaid may wrap a long edge label, so look for its start only
    assert "at_least 4 of 5" in compiled.mermaid()


def test_agents_with_different_models_compile(tmp_path: Path) -> None:
    path = _variant(
        tmp_path,
        "aidsafe",
        (
            "        - name: agent_1\n          role: deliberator\n        - name: agent_2\n          role: deliberator\n",
            "        - name: agent_1\n          role: deliberator\n          model: agree\n"
            "        - name: agent_2\n          role: deliberator\n          model: never-agree\n",
        ),
    )
    compiled = compile_graph(path, settings=ModelSettings(backend="fake", model="default"))
    assert compiled.models == {
        "intent": "fake:default",
        "initializer": "fake:default",
        "deliberate.agent_1": "fake:agree",
        "deliberate.agent_2": "fake:never-agree",
        "refiner": "fake:default",
    }


def test_agents_list_in_parallel_loop_with_models(tmp_path: Path) -> None:
    path = _variant(
        tmp_path,
        "roundtable",
        (
            "      replicas: 3\n      role: deliberator\n",
            "      agents:\n"
            "        - {name: alice, role: deliberator, model: m_a}\n"
            "        - {name: bob, role: deliberator, model: m_b}\n"
            "        - {name: carol, role: deliberator}\n",
        ),
    )
    # models are built lazily: compiling against an endpoint makes no call
    compiled = compile_graph(path, settings=ModelSettings(backend="openai", model="base", base_url="http://127.0.0.1:9/v1"))
    assert {"deliberate_alice", "deliberate_bob", "deliberate_carol"} <= _nodes(compiled)
    models = compiled.models
    assert (models["deliberate.alice"], models["deliberate.bob"], models["deliberate.carol"]) == ("openai:m_a", "openai:m_b", "openai:base")


# --- broken graphs ----------------------------------------------------------------------


def test_unknown_node_in_flow(tmp_path: Path) -> None:
    path = _variant(
        tmp_path,
        "aidsafe",
        (AIDSAFE_FLOW, "flow:\n  - intent\n  - init\n  - deliberate\n  - refine\n  - judge"),
    )
    err = _error(path)
    assert err.line == _line_of(path, "- judge")
    assert err.field == "flow[4]"
    assert "'judge'" in err.message


def test_node_twice_in_flow_is_a_cycle(tmp_path: Path) -> None:
    path = _variant(
        tmp_path,
        "aidsafe",
        (AIDSAFE_FLOW, "flow:\n  - intent\n  - init\n  - deliberate\n  - refine\n  - intent"),
    )
    err = _error(path)
    assert err.line == len(path.read_text().splitlines())
    assert err.field == "flow[4]"
    assert "cycle" in err.message and "'intent'" in err.message


def test_node_not_in_flow_is_never_reached(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", (AIDSAFE_FLOW, "flow: [intent, init, deliberate]"))
    err = _error(path)
    assert err.line == _line_of(path, "role: refiner")
    assert err.field == "nodes.refine"
    assert "never reached" in err.message


def test_unknown_role(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("  refine:\n    role: refiner", "  refine:\n    role: refinr"))
    err = _error(path)
    assert err.line == _line_of(path, "role: refinr")
    assert err.field == "nodes.refine.role"
    assert "'refinr'" in err.message


def test_deliberation_role_used_as_step(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("  refine:\n    role: refiner", "  refine:\n    role: deliberator  # wrong"))
    err = _error(path)
    assert err.line == _line_of(path, "# wrong")
    assert err.field == "nodes.refine.role"
    assert "loop" in err.message


def test_loop_agent_role_must_deliberate(tmp_path: Path) -> None:
    path = _variant(
        tmp_path,
        "aidsafe",
        ("        - name: agent_2\n          role: deliberator", "        - name: agent_2\n          role: refiner"),
    )
    err = _error(path)
    assert err.line == _line_of(path, "          role: refiner")
    assert err.field == "nodes.deliberate.loop.agents[1].role"
    assert "deliberation" in err.message


def test_loop_replica_role_must_deliberate(tmp_path: Path) -> None:
    path = _variant(tmp_path, "roundtable", ("      role: deliberator\n", "      role: initializer\n"))
    err = _error(path)
    assert err.line == _line_of(path, "      role: initializer")
    assert err.field == "nodes.deliberate.loop.role"


def test_sequential_loop_rejects_majority(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("consensus: first_agree", "consensus: majority"))
    err = _error(path)
    assert err.line == _line_of(path, "consensus: majority")
    assert err.field == "nodes.deliberate.loop.consensus"
    assert "first_agree" in err.message


def test_parallel_loop_rejects_first_agree(tmp_path: Path) -> None:
    path = _variant(tmp_path, "roundtable", ("consensus: majority", "consensus: first_agree"))
    err = _error(path)
    assert err.line == _line_of(path, "consensus: first_agree")
    assert err.field == "nodes.deliberate.loop.consensus"
    assert "votes" in err.message


def test_at_least_needs_min_agree(tmp_path: Path) -> None:
    path = _variant(tmp_path, "roundtable", ("consensus: majority", "consensus: at_least"))
    err = _error(path)
    assert err.line == _line_of(path, "consensus: at_least")
    assert err.field == "nodes.deliberate.loop.consensus"
    assert "min_agree" in err.message


def test_min_agree_over_agent_count(tmp_path: Path) -> None:
    path = _variant(tmp_path, "roundtable", ("consensus: majority", "consensus: at_least\n      min_agree: 4"))
    err = _error(path)
    assert err.line == _line_of(path, "min_agree: 4")
    assert err.field == "nodes.deliberate.loop.min_agree"
    assert "4" in err.message and "3" in err.message


def test_missing_max_rounds(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("      max_rounds: 3\n", ""))
    err = _error(path)
    assert err.field == "nodes.deliberate.loop.max_rounds"
    assert "max_rounds" in err.message and "missing" in err.message
    # the line of the loop mapping that lacks it
    assert _line_of(path, "loop:") <= err.line <= _line_of(path, "consensus:")


def test_zero_max_rounds(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("max_rounds: 3", "max_rounds: 0"))
    err = _error(path)
    assert err.line == _line_of(path, "max_rounds: 0")
    assert err.field == "nodes.deliberate.loop.max_rounds"


def test_agents_and_replicas_together(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("      max_rounds: 3\n", "      replicas: 2\n      max_rounds: 3\n"))
    err = _error(path)
    assert err.field == "nodes.deliberate.loop.agents"
    assert "not both" in err.message
    assert _line_of(path, "agents:") <= err.line <= _line_of(path, "name: agent_1")


def test_duplicate_agent_names(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("name: agent_2", "name: agent_1  # again"))
    err = _error(path)
    assert err.line == _line_of(path, "# again")
    assert err.field == "nodes.deliberate.loop.agents[1].name"
    assert "duplicate" in err.message and "agent_1" in err.message


def test_newer_schema_says_newer(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("schema: aidsafe.graph/v1", "schema: aidsafe.graph/v2"))
    err = _error(path)
    assert err.line == _line_of(path, "schema: aidsafe.graph/v2")
    assert err.field == "schema"
    assert "newer" in err.message


def test_foreign_schema_is_rejected(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("schema: aidsafe.graph/v1", "schema: aidsafe.policies/v1"))
    err = _error(path)
    assert err.field == "schema"
    assert "aidsafe.graph/v1" in err.message


def test_misspelt_role_key_suggests(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("    template: refiner.jinja", "    templat: refiner.jinja"))
    err = _error(path)
    assert err.line == _line_of(path, "templat:")
    assert err.field == "roles.refiner.templat"
    assert "did you mean 'template'" in err.message


def test_misspelt_top_level_key_suggests(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("\nflow: [", "\nflows: ["))
    err = _error(path)
    assert err.line == _line_of(path, "flows:")
    assert err.field == "flows"
    assert "did you mean 'flow'" in err.message


def test_misspelt_loop_key_reports_place(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("max_rounds: 3", "max_round: 3"))
    err = _error(path)
    assert err.line == _line_of(path, "max_round: 3")
    assert err.field == "nodes.deliberate.loop.max_round"
    assert "max_round" in err.message


def test_misspelt_loop_key_suggests(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("max_rounds: 3", "max_round: 3"))
    err = _error(path)
    assert "did you mean 'max_rounds'" in err.message


def test_refiner_before_draft(tmp_path: Path) -> None:
    path = _variant(
        tmp_path,
        "aidsafe",
        (AIDSAFE_FLOW, "flow:\n  - intent\n  - refine\n  - init\n  - deliberate"),
    )
    err = _error(path)
    assert err.line == _line_of(path, "  - refine")
    assert err.field == "flow[1]"
    assert "draft" in err.message


def test_invalid_yaml(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("  init:\n    role: initializer", "  init:\n    role: initializer: oops"))
    err = _error(path)
    assert err.line == _line_of(path, "initializer: oops")
    assert "invalid YAML" in err.message


def test_unknown_graph_name_lists_shipped() -> None:
    with pytest.raises(ConfigError) as info:
        compile_graph("no_such_graph")
    assert "aidsafe" in info.value.message and "roundtable" in info.value.message


def test_missing_template_names_the_template(tmp_path: Path) -> None:
    path = _variant(tmp_path, "aidsafe", ("template: refiner.jinja", "template: nowhere.jinja"))
    with pytest.raises(ConfigError) as info:
        compile_graph(path)
    assert info.value.file is not None and info.value.file.endswith("nowhere.jinja")
    assert "refiner" in info.value.message


def test_local_template_overrides_shipped(tmp_path: Path) -> None:
    (tmp_path / "intent.jinja").write_text(
        "{% block system %}LOCAL {{ policies | length }}{% endblock %}\n{% block user %}{{ prompt }}{% endblock %}\n",
        encoding="utf-8",
    )
    path = _variant(tmp_path, "aidsafe", ("name: aidsafe", "name: local"))
    pipe = Pipeline(path, settings=ModelSettings(backend="fake"))
    messages = pipe.messages("intent", "hello")
    assert messages == [{"role": "system", "content": "LOCAL 5"}, {"role": "user", "content": "hello"}]


def test_node_name_colliding_with_loop_node_is_a_config_error(tmp_path: Path) -> None:
    path = _variant(
        tmp_path,
        "roundtable",
        ("  refine:\n    role: refiner", "  deliberate_vote:\n    role: refiner"),
        ("deliberate, refine]", "deliberate, deliberate_vote]"),
    )
    with pytest.raises(ConfigError) as info:
        compile_graph(path)
    assert info.value.file == str(path)


def test_a_graph_file_cannot_run_python(tmp_path: Path) -> None:
    """YAML is read with safe_load: a Python tag is a load error, nothing is imported or called."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(
        "schema: aidsafe.graph/v1\n"
        f"name: !!python/object/apply:os.system ['touch {marker}']\n"
        "roles: {single: {template: single.jinja, reply: draft}}\n"
        "nodes: {single: {role: single}}\n"
        "flow: [single]\n"
    )
    with pytest.raises(ConfigError) as info:
        compile_graph(path)
    assert info.value.line == 2 and "invalid YAML" in info.value.message
    assert not marker.exists()


def test_an_unset_system_role_leaves_the_graph_digest_as_it_was(tmp_path: Path) -> None:
    """A field added to the graph format must not change the digest of a file that does not use it:
    an output written before could no longer be resumed ("written with another configuration")."""
    spec, _ = load_graph_spec("aidsafe")
    assert all("system_role" not in role for role in spec.model_dump()["roles"].values())
    shipped = (builtin_dir("graphs") / "single.yaml").read_text()
    graph = tmp_path / "g.yaml"
    graph.write_text(shipped.replace("    reply: draft\n", "    reply: draft\n    system_role: merge\n", 1))
    merged, _ = load_graph_spec(graph)
    assert merged.model_dump()["roles"]["single"]["system_role"] == "merge"  # set, it is part of what the output depends on
    settings = ModelSettings(backend="fake")
    assert compile_graph(graph, settings=settings).config()["graph"] != compile_graph("single", settings=settings).config()["graph"]
