"""Compile a graph file into a LangGraph ``StateGraph``: one generic compiler for every topology.

- a ``role`` node becomes one LangGraph node calling that role;
- a ``sequential`` loop becomes one node per agent in a ring; each agent's conditional edge
  leaves the loop on consensus or when the round budget is spent;
- a ``parallel`` loop becomes one node per agent, fanned out from the node before it (a LangGraph
  super-step runs them concurrently), joined by a ``vote`` node that applies the consensus rule
  and either leaves the loop or fans out again.

The nodes, their ids and the exit rule's words come from the graph's plan
(:mod:`aidsafe.graph.plan`), whose entries the LangGraph nodes carry as ``metadata``. What each
node does is in :mod:`aidsafe.graph.nodes`; which template, kind and model each role uses is in
:mod:`aidsafe.graph.binding`. The round counter lives in the state and every exit
writes ``stop_reason``; LangGraph's ``recursion_limit`` is sized from the nodes per round times
the rounds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph

from ..models import ModelFactory, ModelPool, ModelSettings, check_settings, make_model
from ..policies import PolicySet, load_policy_set
from .binding import Binding, bind
from .nodes import NodeFn, Nodes, template_variables
from .plan import GraphPlan, LoopPlan, PlanNode, plan_graph, word_exit
from .spec import GraphSpec, LoopSpec, load_graph_spec
from .state import GraphContext, PromptState

__all__ = ["CompiledAidsafe", "compile_graph", "exit_label"]


@dataclass
class CompiledAidsafe:
    """A compiled graph, ready to run prompts: the LangGraph object plus what records need."""

    spec: GraphSpec
    path: Path
    policies: PolicySet
    bindings: dict[str, Binding]
    graph: Any
    """The compiled LangGraph (``CompiledStateGraph``): stream it, draw it, checkpoint it. Pass
    ``context=GraphContext(models=...)`` to choose the models; without it the graph uses :attr:`model_pool`."""
    recursion_limit: int
    model_pool: ModelPool
    """The chat models, one per distinct settings, created on first use."""
    plan: GraphPlan
    """One entry per LangGraph node (id, stage, role, agent, binding, loop and exit rule), each also
    attached to its node as ``metadata`` (:mod:`aidsafe.graph.plan`)."""

    @property
    def models(self) -> dict[str, str]:
        """``backend:model`` per role and agent, as written in records."""
        return {name: b.settings.label() for name, b in self.bindings.items()}

    def context(self, models: ModelPool | None = None) -> GraphContext:
        """The run context for ``graph.ainvoke(..., context=...)``: these models, or the graph's own."""
        return GraphContext(models=models or self.model_pool)

    def mermaid(self) -> str:
        """Mermaid text of the compiled LangGraph (offline: no web service)."""
        return str(self.graph.get_graph().draw_mermaid())

    def variables(self, state: PromptState, **extra: Any) -> dict[str, Any]:
        """The template variables for the current state."""
        return template_variables(self.policies, state, **extra)

    def config(self) -> dict[str, Any]:
        """What a record of this graph depends on: graph, policy pack, templates, models and
        sampling settings. An output remembers it; resuming with a different one is refused."""
        any_settings = next(iter(self.bindings.values())).settings
        return {
            "graph": {"name": self.spec.name, "sha256": _digest(self.spec.model_dump(mode="json", by_alias=True))},
            "policies": {**self.policies.ref(), "sha256": _digest(self.policies.model_dump(mode="json", by_alias=True))},
            "templates": {b.role: b.template.sha256 for b in self.bindings.values()},
            "models": self.models,
            "sampling": any_settings.sampling(),
        }

    async def aclose(self) -> None:
        """Close the models' connections."""
        await self.model_pool.aclose()


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]


class _Wiring:
    """Turns a plan into the nodes and edges of a ``StateGraph``."""

    def __init__(self, spec: GraphSpec, plan: GraphPlan, bindings: dict[str, Binding], nodes: Nodes) -> None:
        self.spec = spec
        self.plan = plan
        self.bindings = bindings
        self.nodes = nodes
        self.builder: StateGraph[PromptState, GraphContext] = StateGraph(PromptState, context_schema=GraphContext)

    def _add(self, entry: PlanNode, action: NodeFn) -> None:
        self.builder.add_node(entry.id, action, metadata=entry.metadata())

    def build(self) -> tuple[Any, int]:
        spec = self.spec
        b = self.builder
        entries: dict[str, list[str]] = {}
        loops = {loop.id: loop for loop in self.plan.loops}
        steps_per_pass = 0
        for node_id in spec.flow:
            if node_id not in loops:
                (entry,) = self.plan.of_flow(node_id)
                assert entry.binding is not None
                self._add(entry, self.nodes.step(entry, self.bindings[entry.binding.name]))
                entries[node_id] = [entry.id]
                steps_per_pass += 1
                continue
            loop = loops[node_id]
            spec_loop = loop.spec
            for entry in self.plan.of_flow(node_id):
                if entry.kind == "vote":  # added after its agents
                    continue
                assert entry.binding is not None
                binding = self.bindings[entry.binding.name]
                if spec_loop.mode == "parallel":
                    factory = self.nodes.parallel_agent
                elif binding.kind.placement == "agent":
                    factory = self.nodes.sequential_agent
                else:
                    factory = self.nodes.loop_step
                self._add(entry, factory(entry, spec_loop, binding))
            names = list(loop.agents)
            if loop.vote is None:
                entries[node_id] = names[:1]
                steps_per_pass += len(names) * spec_loop.max_rounds
            else:
                self._add(self.plan[loop.vote], self.nodes.vote(self.plan[loop.vote], spec_loop))
                b.add_edge(names, loop.vote)
                entries[node_id] = names
                steps_per_pass += 2 * spec_loop.max_rounds
        for position, node_id in enumerate(spec.flow):
            following = entries[spec.flow[position + 1]] if position + 1 < len(spec.flow) else [END]
            if position == 0:
                for entry_id in entries[node_id]:
                    b.add_edge(START, entry_id)
            if node_id in loops:
                self._wire_loop(loops[node_id], following)
            else:
                (source,) = entries[node_id]
                for target in following:
                    b.add_edge(source, target)
        return b.compile(name=spec.name), steps_per_pass + len(spec.flow) + 5

    def _wire_loop(self, loop: LoopPlan, following: list[str]) -> None:
        names = list(loop.agents)
        # a graph has one loop (checked in spec.py), so what follows a loop is one role node or the end
        assert len(following) == 1, following
        exit_to = following[0]
        label = loop.exit.edge

        def leave_or_continue(state: PromptState) -> str:
            return label if state.get("error") or state.get("stop_reason") else "continue"

        if loop.vote is None:
            for index, name in enumerate(names):
                nxt = names[(index + 1) % len(names)]
                # LangGraph draws a path map's keys as the labels of the edges to its values
                ring: dict[Hashable, str] = {label: exit_to, "continue": nxt}
                self.builder.add_conditional_edges(name, leave_or_continue, ring)
            return
        labels = {f"next round: {name}": name for name in names}

        def after_vote(state: PromptState) -> str | list[str]:
            if state.get("error") or state.get("stop_reason"):
                return label
            return list(labels)

        routes: dict[Hashable, str] = {label: exit_to, **labels}
        self.builder.add_conditional_edges(loop.vote, after_vote, routes)


def exit_label(loop: LoopSpec, stops: tuple[str, ...] = ()) -> str:
    """Label of a loop's exit edge in pictures: the consensus rule (or the stop reasons its agents
    may give) and the round budget (:attr:`ExitRule.edge <aidsafe.graph.plan.ExitRule.edge>`, worded
    by :func:`~aidsafe.graph.plan.word_exit`)."""
    return word_exit(loop, stops).edge


def compile_graph(
    graph: str | Path = "aidsafe",
    policies: str | Path | PolicySet = "aidsafe5",
    settings: ModelSettings | None = None,
    *,
    role_models: dict[str, str] | None = None,
    model_factory: ModelFactory = make_model,
) -> CompiledAidsafe:
    """Load, check and compile a graph (shipped name or path) with a policy pack and model settings.

    Every check (schema, references, templates and their variables) runs here, before any model
    call. Models are created lazily, on their first call.
    """
    spec, path = load_graph_spec(graph)
    pack = policies if isinstance(policies, PolicySet) else load_policy_set(policies)
    settings = settings or ModelSettings()
    plan = plan_graph(spec)
    bindings = bind(spec, path, pack, settings, role_models or {}, plan)
    plan = plan.bound(bindings)
    if model_factory is make_model:
        for binding in bindings.values():
            check_settings(binding.settings)
    models = ModelPool(model_factory)
    data_keys = frozenset(key for binding in bindings.values() for key in binding.kind.writes)
    minority = all(n.loop.minority == "keep" for n in spec.nodes.values() if n.loop is not None)
    graph_obj, limit = _Wiring(spec, plan, bindings, Nodes(pack, models, data_keys, minority=minority)).build()
    return CompiledAidsafe(
        spec=spec, path=path, policies=pack, bindings=bindings, graph=graph_obj, recursion_limit=limit, model_pool=models, plan=plan
    )
