"""The plan of a compiled graph: one entry per LangGraph node, built once from the spec.

A LangGraph node's identity is decided here and nowhere else: its id (``intent``,
``deliberate_agent_1``, ``deliberate_vote``), the stage name its records write in ``error.stage``
and ``faults[].stage`` (``intent``, ``deliberate/agent_1``), the key of its tokens in a record's
``usage`` (the graph file's node: ``intent``, ``deliberate``), its role, agent and binding
(the key in ``compiled.bindings``, template, reply kind, model) and the loop it belongs to. The
compiler wires the plan's entries and attaches each one to its LangGraph node as
``metadata={"aidsafe": ...}`` (see :meth:`PlanNode.metadata`); the binder, the nodes, the pictures
(:mod:`aidsafe.graph.draw`) and the report page (:mod:`aidsafe.viewer`) read the plan, so nothing
parses a node name back into its parts.

A loop's exit rule is worded by one function, :func:`word_exit`: the loop box and the vote box of
the pictures, the HTML page, the labels of the LangGraph edges that leave the loop and the
nodes' metadata all take their words from the :class:`ExitRule` it returns.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from ..kinds import get_kind

if TYPE_CHECKING:
    from .binding import Binding
    from .spec import AgentSpec, GraphSpec, LoopSpec

__all__ = ["METADATA_KEY", "BindingPlan", "ExitRule", "GraphPlan", "LoopPlan", "PlanNode", "loop_node_ids", "plan_graph", "word_exit"]

METADATA_KEY = "aidsafe"
"""The key of a plan entry in its LangGraph node's ``metadata``. One key holding a mapping keeps
the entry out of Mermaid's node labels (it prints scalar metadata values only) and out of the
way of the keys LangGraph and tracers add to a run's metadata."""

NodeKind = Literal["role", "agent", "vote"]


def _rounds(n: int) -> str:
    return f"{n} round{'s' if n != 1 else ''}"


@dataclass(frozen=True)
class ExitRule:
    """What ends a loop, in words (made by :func:`word_exit` only)."""

    rule: str
    """What ends the loop besides its round budget, as every picture, page and node metadata names
    it: the consensus rule (``first_agree``, ``majority``, ``unanimous``, ``at_least 2 of 3``) or the
    stop reasons its agents may give (``violation``); empty when only the budget does."""
    max_rounds: int
    min_rounds: int
    stops: tuple[str, ...]
    """The stop reasons the loop's agents may give (a reply kind's ``stops``), in agent order."""
    edge: str
    """The label of the LangGraph edges that leave the loop (LangGraph draws a path map's keys as
    edge labels: Mermaid, the pictures' exit edges), in the rule's own words: ``first_agree or
    budget of 3 rounds``, ``violation or budget of 3 rounds``, ``majority or budget of 3 rounds, at
    least 2``."""
    label: str
    """The loop box's label in the pictures: ``deliberation loop: MODE, exit on RULE, budget N rounds``
    (``, at least M`` with ``min_rounds``)."""
    budget: str
    """The round budget as the HTML page's loop table gives it: ``3 rounds`` (``(at least 2)``)."""

    def metadata(self) -> dict[str, Any]:
        """The rule, as a plan entry's metadata holds it."""
        return {"rule": self.rule, "max_rounds": self.max_rounds, "min_rounds": self.min_rounds}


def word_exit(loop: LoopSpec, stops: Sequence[str] = ()) -> ExitRule:
    """Word a loop's exit rule: the one place its words are made (see :class:`ExitRule`)."""
    stops = tuple(stops)
    n = len(loop.agent_list())
    if loop.consensus == "at_least":
        rule = f"at_least {loop.min_agree} of {n}"
    elif loop.consensus is not None:
        rule = loop.consensus
    else:
        rule = " or ".join(stops)
    exit_on = f", exit on {rule}" if rule else ""
    at_least = f", at least {loop.min_rounds}" if loop.min_rounds else ""
    edge = " or ".join([*([rule] if rule else []), f"budget of {_rounds(loop.max_rounds)}"]) + at_least
    label = f"deliberation loop: {loop.mode}{exit_on}, budget {_rounds(loop.max_rounds)}{at_least}"
    budget = f"{loop.max_rounds} rounds" + (f" (at least {loop.min_rounds})" if loop.min_rounds else "")
    return ExitRule(rule=rule, max_rounds=loop.max_rounds, min_rounds=loop.min_rounds, stops=stops, edge=edge, label=label, budget=budget)


def loop_node_ids(loop_id: str, loop: LoopSpec) -> list[str]:
    """The LangGraph node ids a loop becomes: one per agent, then a parallel loop's vote."""
    return [_agent_names(loop_id, a.name)[0] for a in loop.agent_list()] + ([_vote_id(loop_id)] if loop.mode == "parallel" else [])


def _agent_names(loop_id: str, agent: str) -> tuple[str, str, str]:
    """A loop agent's LangGraph node id, record stage and binding key."""
    return f"{loop_id}_{agent}", f"{loop_id}/{agent}", f"{loop_id}.{agent}"


def _vote_id(loop_id: str) -> str:
    return f"{loop_id}_vote"


@dataclass(frozen=True)
class BindingPlan:
    """What a node calls: its binding's key in ``compiled.bindings``, template, reply kind, model."""

    name: str
    """The key in ``compiled.bindings`` and in a record's ``models``: the role (a role node) or
    ``loop.agent`` (a loop agent)."""
    template: str
    """The role's template, as the graph file names it."""
    reply: str
    """The reply kind."""
    model: str | None
    """``backend:model`` once bound (as a record's ``models`` gives it); before that, the model the
    graph file names for the agent or role, if any."""


@dataclass(frozen=True)
class PlanNode:
    """One LangGraph node of a compiled graph."""

    id: str
    """The LangGraph node id."""
    kind: NodeKind
    """``role`` (a role node), ``agent`` (a loop agent), ``vote`` (a parallel loop's vote)."""
    flow: str
    """The graph file's node it comes from (a role node's id, or its loop's): the key of its tokens
    in a record's ``usage``."""
    stage: str
    """The stage its records name in ``error.stage`` and ``faults[].stage``: the node id of a role
    node, ``loop/agent`` for a loop agent, the loop's id for a vote (whose failures are its agents')."""
    role: str | None = None
    """The role it calls (None for a vote)."""
    agent: str | None = None
    """The agent's name in its loop (loop agents only)."""
    index: int | None = None
    """The agent's position in its loop (loop agents only)."""
    binding: BindingPlan | None = None
    """What it calls (None for a vote)."""
    loop: str | None = None
    """The loop it belongs to (its node id in the graph file), if any."""
    exit: ExitRule | None = None
    """That loop's exit rule."""

    def metadata(self) -> dict[str, Any]:
        """The entry as its LangGraph node's ``metadata`` (plain JSON values, under :data:`METADATA_KEY`)."""
        binding = None
        if self.binding is not None:
            binding = {"name": self.binding.name, "template": self.binding.template, "reply": self.binding.reply, "model": self.binding.model}
        entry = {
            "node": self.id,
            "kind": self.kind,
            "flow": self.flow,
            "stage": self.stage,
            "role": self.role,
            "agent": self.agent,
            "binding": binding,
            "loop": self.loop,
            "exit": self.exit.metadata() if self.exit is not None else None,
        }
        return {METADATA_KEY: entry}


@dataclass(frozen=True)
class LoopPlan:
    """A loop of the graph: its LangGraph nodes and its exit rule."""

    id: str
    """The loop's node id in the graph file (its agents' ``usage`` key)."""
    spec: LoopSpec
    agents: tuple[str, ...]
    """The LangGraph node ids of its agents, in order."""
    vote: str | None
    """The LangGraph node id of a parallel loop's vote."""
    exit: ExitRule

    @property
    def members(self) -> tuple[str, ...]:
        """Its LangGraph nodes: the agents, then the vote of a parallel loop."""
        return (*self.agents, self.vote) if self.vote is not None else self.agents


@dataclass(frozen=True)
class GraphPlan:
    """The LangGraph nodes of a graph (``__start__`` and ``__end__`` aside), in the order they are
    added: each graph file node of the flow in turn, a loop as its agents then its vote."""

    name: str
    nodes: tuple[PlanNode, ...]
    loops: tuple[LoopPlan, ...]

    def __iter__(self) -> Iterator[PlanNode]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, node_id: object) -> bool:
        return any(n.id == node_id for n in self.nodes)

    def __getitem__(self, node_id: str) -> PlanNode:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    @property
    def ids(self) -> list[str]:
        """The LangGraph node ids, in order."""
        return [n.id for n in self.nodes]

    @property
    def loop(self) -> LoopPlan | None:
        """The graph's loop (a graph has at most one), if any."""
        return self.loops[0] if self.loops else None

    def get(self, node_id: str) -> PlanNode | None:
        """The entry of a LangGraph node (None for ``__start__``, ``__end__`` and unknown ids)."""
        return next((n for n in self.nodes if n.id == node_id), None)

    def loop_of(self, node: PlanNode) -> LoopPlan | None:
        """The loop a node belongs to, if any."""
        return next((loop for loop in self.loops if loop.id == node.loop), None)

    def of_flow(self, flow_id: str) -> list[PlanNode]:
        """The LangGraph nodes of one graph file node: the role node, or the loop's agents and vote."""
        return [n for n in self.nodes if n.flow == flow_id]

    def by_stage(self, stage: str) -> PlanNode | None:
        """The node that writes ``stage`` in its records' errors and faults (None for ``graph``)."""
        return next((n for n in self.nodes if n.stage == stage and n.kind != "vote"), None)

    def bindings(self) -> list[PlanNode]:
        """The nodes that call a model, one per binding key, in order."""
        seen: dict[str, PlanNode] = {}
        for node in self.nodes:
            if node.binding is not None:
                seen.setdefault(node.binding.name, node)
        return list(seen.values())

    def bound(self, bindings: Mapping[str, Binding]) -> GraphPlan:
        """The plan with each binding's model as bound (``backend:model``)."""

        def bind(node: PlanNode) -> PlanNode:
            if node.binding is None:
                return node
            return replace(node, binding=replace(node.binding, model=bindings[node.binding.name].settings.label()))

        return replace(self, nodes=tuple(bind(n) for n in self.nodes))

    def metadata(self) -> dict[str, dict[str, Any]]:
        """Each node's metadata (:meth:`PlanNode.metadata`), by node id."""
        return {n.id: n.metadata() for n in self.nodes}


def plan_graph(spec: GraphSpec) -> GraphPlan:
    """The plan of a checked graph spec (models as the graph file names them; see :meth:`GraphPlan.bound`)."""
    nodes: list[PlanNode] = []
    loops: list[LoopPlan] = []
    for flow_id in spec.flow:
        node = spec.nodes[flow_id]
        if node.role is not None:
            role = spec.roles[node.role]
            binding = BindingPlan(node.role, role.template, role.reply, role.model)
            nodes.append(PlanNode(id=flow_id, kind="role", flow=flow_id, stage=flow_id, role=node.role, binding=binding))
            continue
        loop = node.loop
        assert loop is not None
        agents = loop.agent_list()
        rule = word_exit(loop, tuple(dict.fromkeys(s for a in agents for s in get_kind(spec.roles[a.role].reply).stops)))
        ids: list[str] = []
        for index, agent in enumerate(agents):
            node_id, stage, key = _agent_names(flow_id, agent.name)
            nodes.append(
                PlanNode(
                    id=node_id, kind="agent", flow=flow_id, stage=stage, role=agent.role, agent=agent.name, index=index,
                    binding=_agent_binding(spec, agent, key), loop=flow_id, exit=rule,
                )
            )
            ids.append(node_id)
        vote = _vote_id(flow_id) if loop.mode == "parallel" else None
        if vote is not None:
            nodes.append(PlanNode(id=vote, kind="vote", flow=flow_id, stage=flow_id, loop=flow_id, exit=rule))
        loops.append(LoopPlan(id=flow_id, spec=loop, agents=tuple(ids), vote=vote, exit=rule))
    return GraphPlan(name=spec.name, nodes=tuple(nodes), loops=tuple(loops))


def _agent_binding(spec: GraphSpec, agent: AgentSpec, key: str) -> BindingPlan:
    role = spec.roles[agent.role]
    return BindingPlan(key, role.template, role.reply, agent.model or role.model)
