"""The graph file format (``schema: aidsafe.graph/v1``), as Pydantic models.

A graph file names the roles (template, reply kind, optional model), the nodes (a role call, or
a bounded deliberation loop), and the flow (the order the nodes run in). Loops are a construct
of their own with a required ``max_rounds`` and a consensus rule, so no cycle without an exit
can be written. Files are loaded with ``yaml.safe_load`` and never name Python code.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from .._yaml import check_schema_version, load_yaml_model
from ..errors import ConfigError
from ..kinds import AGENT_INPUTS, COMMON_INPUTS, STEP_INPUTS, ReplyKind, get_kind, kind_names
from ..resources import resolve
from .plan import loop_node_ids

__all__ = ["SCHEMA", "AgentSpec", "GraphSpec", "LoopSpec", "NodeSpec", "RoleSpec", "load_graph_spec"]

SCHEMA = "aidsafe.graph/v1"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

Consensus = Literal["first_agree", "majority", "unanimous", "at_least"]
RESERVED_VARIABLES = COMMON_INPUTS | AGENT_INPUTS | {"data"}


def _fail(message: str, *at: str | int) -> PydanticCustomError:
    return PydanticCustomError("graph", "{message}", {"message": message, "at": at})


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{what} {value!r} must be lower_snake_case (letters, digits, '_'; max 40)")
    return value


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoleSpec(_Spec):
    """A role: which template renders its messages, what it replies, which model answers."""

    template: str
    """Template file, relative to the graph file, else a shipped template name (``intent.jinja``)."""
    reply: str
    """Reply kind (:mod:`aidsafe.kinds`): ``intents``, ``draft``, ``deliberation``, ``refinement``, or one registered by a plugin."""
    model: str | None = None
    """Model name for this role (same backend and endpoint as the run); default: the run's ``--model``."""
    max_tokens: int | None = Field(default=None, ge=16, le=131072)
    """Reply budget for this role in tokens; default: the reply kind's (sized for a Mixtral-class
    model). ``--max-tokens`` overrides it for every role."""
    system_role: Literal["native", "merge"] | None = None
    """``merge``: this role's system text joins the first user turn (for a model whose chat template
    refuses a system message, e.g. Mixtral-8x7B-Instruct or Gemma); ``native``: always a system
    message. Default: the run's ``--system-role`` (``auto``: detected per endpoint and model)."""
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Plain values handed to this role's template as variables (e.g. ``belief_placement: user``):
    data, never code."""
    description: str = ""

    @model_serializer(mode="wrap")
    def _without_unset_system_role(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """An unset ``system_role`` is left out of the dump, so that a graph without it keeps the
        digest it had before the field existed (an output written then can still be resumed)."""
        data = handler(self)
        if self.system_role is None:
            data.pop("system_role", None)
        return data

    @field_validator("params")
    @classmethod
    def _param_names(cls, params: dict[str, str | int | float | bool]) -> dict[str, str | int | float | bool]:
        for name in params:
            if not name.isidentifier() or name in RESERVED_VARIABLES:
                raise ValueError(f"param {name!r} must be an identifier other than the graph's own variables ({', '.join(sorted(RESERVED_VARIABLES))})")
        return params

    @field_validator("reply")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        usable = kind_names("graph")
        if value in kind_names():
            if value not in usable:
                raise ValueError(f"reply kind {value!r} cannot answer in a graph: it declares no state update (graph reply kinds: {', '.join(usable)})")
        else:
            close = difflib.get_close_matches(value, usable, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown reply kind {value!r}{hint} (graph reply kinds: {', '.join(usable)})")
        return value


class AgentSpec(_Spec):
    """One deliberating agent of a loop."""

    name: str
    """Agent name, recorded in each deliberation turn."""
    role: str
    """A role of the graph: a deliberating kind (``deliberation``) or, in a sequential loop, any kind
    that updates the state (e.g. the ear-whisperer's ``belief``, ``whispered`` and ``safety_verdict``)."""
    model: str | None = None
    """Model name for this agent only (heterogeneous agents)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value, "agent name")


class LoopSpec(_Spec):
    """A bounded loop: agents take turns (sequential) or all answer each round (parallel).

    It ends at its consensus rule (deliberating agents), when an agent's reply says so (a kind that
    ``stops``, e.g. the safety scorer on a violation), or when the round budget is spent.
    """

    mode: Literal["sequential", "parallel"]
    """``sequential``: agents speak in turn. ``parallel``: all agents answer each round, then vote."""
    agents: list[AgentSpec] | None = None
    """The agents, in order. Give either ``agents`` or ``replicas`` + ``role``."""
    replicas: int | None = Field(default=None, ge=1, le=32)
    """Shorthand: N agents ``agent_1..agent_N`` of one role."""
    role: str | None = None
    """The role of the replicas."""
    max_rounds: int = Field(ge=1, le=20)
    """Deliberation budget. A round is one turn of every agent."""
    min_rounds: int = Field(default=0, ge=0, le=20)
    """Rounds that always run: an agreement before ``min_rounds`` full rounds are done does not end
    the loop (the agreeing turn is recorded and the next agent reviews). 0 (the default): the
    consensus rule may end the loop at any turn. ``min_rounds = max_rounds`` runs exactly that many
    rounds, as the paper's round ablation does."""
    consensus: Consensus | None = None
    """For deliberating agents: ``first_agree`` (sequential); ``majority``, ``unanimous`` or
    ``at_least`` (parallel votes). Absent for a loop of agents that do not deliberate."""
    min_agree: int | None = Field(default=None, ge=1)
    """With ``consensus: at_least``: how many agents must agree."""
    minority: Literal["keep", "drop"] = "keep"
    """Parallel loops: when a round reaches consensus, ``keep`` merges the outvoted agents' new and
    superseded thoughts (marked with their author) for the refiner to weigh; ``drop`` discards them."""

    @model_serializer(mode="wrap")
    def _without_default_min_rounds(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """``min_rounds: 0`` is left out of the dump, so that a graph without it keeps the digest it
        had before the field existed."""
        data = handler(self)
        if self.min_rounds == 0:
            data.pop("min_rounds", None)
        return data

    @model_validator(mode="after")
    def _shape(self) -> LoopSpec:
        if (self.agents is None) == (self.replicas is None):
            raise _fail("give either 'agents' or 'replicas' (with 'role'), not both or neither", "agents")
        if self.replicas is not None and self.role is None:
            raise _fail("'replicas' needs 'role'", "replicas")
        if self.agents is not None:
            if not self.agents:
                raise _fail("a loop needs at least one agent", "agents")
            names = [a.name for a in self.agents]
            for index, name in enumerate(names):
                if names.index(name) != index:
                    raise _fail(f"duplicate agent name {name!r}", "agents", index, "name")
        if self.mode == "sequential" and self.consensus not in (None, "first_agree"):
            raise _fail(f"a sequential loop stops at the first agreement: use consensus 'first_agree', not {self.consensus!r}", "consensus")
        if self.mode == "parallel" and self.consensus in (None, "first_agree"):
            raise _fail("a parallel loop votes: use consensus 'majority', 'unanimous' or 'at_least'", "consensus")
        if self.mode == "sequential" and "minority" in self.model_fields_set:
            raise _fail("'minority' only goes with a parallel loop (in a sequential one, the first agreement ends it)", "minority")
        if self.min_rounds > self.max_rounds:
            raise _fail(f"min_rounds {self.min_rounds} exceeds max_rounds {self.max_rounds}", "min_rounds")
        if self.min_rounds and self.consensus is None:
            raise _fail("'min_rounds' only goes with a consensus rule (it keeps consensus from ending the loop early)", "min_rounds")
        if self.consensus == "at_least":
            if self.min_agree is None:
                raise _fail("consensus 'at_least' needs 'min_agree'", "consensus")
            if self.min_agree > len(self.agent_list()):
                raise _fail(f"min_agree {self.min_agree} exceeds the {len(self.agent_list())} agents", "min_agree")
        elif self.min_agree is not None:
            raise _fail("'min_agree' only goes with consensus 'at_least'", "min_agree")
        return self

    def agent_list(self) -> list[AgentSpec]:
        """The agents, expanding ``replicas``."""
        if self.agents is not None:
            return list(self.agents)
        assert self.replicas is not None and self.role is not None
        return [AgentSpec(name=f"agent_{i}", role=self.role) for i in range(1, self.replicas + 1)]

    def rule(self) -> str:
        """How the loop works and when it ends, in words, as its agents are told."""
        n = len(self.agent_list())
        if self.consensus is None:
            return f"They take turns, at most {self.max_rounds} rounds."
        rounds = f" once {self.min_rounds} full round{'s' if self.min_rounds != 1 else ''} are done" if self.min_rounds else ""
        if self.mode == "sequential":
            return (
                "They take turns: each reviews the thoughts and the response as the previous reviewer, or the first draft, "
                f"left them. Agreeing ends the deliberation{rounds}: the current thoughts and response become final."
            )
        need = {"majority": f"a majority ({n // 2 + 1} of {n})", "unanimous": f"all {n}", "at_least": f"at least {self.min_agree} of {n}"}
        return (
            "They answer in parallel, each round, without seeing each other's answer: each answer is one vote. "
            f"The deliberation ends when {need.get(self.consensus, self.consensus)} agree{rounds}."
        )

    def may_stop(self, round_no: int, turns_done: int | None = None) -> bool:
        """Whether consensus may end the loop now: after ``turns_done`` turns (sequential) or at the
        end of round ``round_no`` (parallel), ``min_rounds`` full rounds are done."""
        if turns_done is None:
            return round_no >= self.min_rounds
        return turns_done >= self.min_rounds * len(self.agent_list())

    def agreed(self, votes: int) -> bool:
        """Whether ``votes`` agreeing agents out of all meet the consensus rule."""
        n = len(self.agent_list())
        if self.consensus == "unanimous":
            return votes == n
        if self.consensus == "majority":
            return votes * 2 > n
        if self.consensus == "at_least":
            return votes >= (self.min_agree or n)
        return votes >= 1


class NodeSpec(_Spec):
    """A node: one role call (``role``) or a deliberation loop (``loop``)."""

    role: str | None = None
    loop: LoopSpec | None = None

    @model_validator(mode="after")
    def _one(self) -> NodeSpec:
        if (self.role is None) == (self.loop is None):
            raise ValueError("a node has either 'role' or 'loop'")
        return self


class GraphSpec(_Spec):
    """A whole graph file."""

    schema_: str = Field(alias="schema")
    """Format version: ``aidsafe.graph/v1``."""
    name: str
    description: str = ""
    roles: dict[str, RoleSpec] = Field(min_length=1)
    nodes: dict[str, NodeSpec] = Field(min_length=1)
    flow: list[str] = Field(min_length=1)
    """Node ids in the order they run. Each node runs once; loops repeat inside themselves only."""

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: str) -> str:
        return check_schema_version(value, SCHEMA)

    @model_validator(mode="after")
    def _references(self) -> GraphSpec:
        for name in list(self.roles) + list(self.nodes):
            if not _NAME.match(name):
                raise _fail(f"name {name!r} must be lower_snake_case", "roles" if name in self.roles else "nodes", name)
        seen: dict[str, int] = {}
        for index, node_id in enumerate(self.flow):
            if node_id not in self.nodes:
                raise _fail(f"unknown node {node_id!r} in flow (nodes: {', '.join(self.nodes)})", "flow", index)
            if node_id in seen:
                raise _fail(
                    f"node {node_id!r} appears twice in flow (items {seen[node_id]} and {index}): that would be a cycle; "
                    "repeat work with a 'loop' node, which has a round budget and an exit",
                    "flow",
                    index,
                )
            seen[node_id] = index
        for node_id in self.nodes:
            if node_id not in seen:
                raise _fail(f"node {node_id!r} is never reached: it is not in flow", "nodes", node_id)
        for node_id, node in self.nodes.items():
            if node.loop is None:
                continue
            for name in loop_node_ids(node_id, node.loop):
                if name in self.nodes:
                    raise _fail(f"node id {name!r} clashes with a node the loop {node_id!r} generates; rename it", "nodes", name)
        loops = [n for n in self.flow if self.nodes[n].loop is not None]
        if len(loops) > 1:
            raise _fail("this version supports one deliberation loop per graph", "nodes", loops[1])
        produced: set[str] = set()
        written: set[str] = set()
        for index, node_id in enumerate(self.flow):
            node = self.nodes[node_id]
            if node.role is not None:
                role = self.roles.get(node.role)
                if role is None:
                    raise _fail(f"unknown role {node.role!r} (roles: {', '.join(self.roles)})", "nodes", node_id, "role")
                kind = get_kind(role.reply)
                if kind.placement != "step":
                    raise _fail(f"role {node.role!r} deliberates: put it in a 'loop' node", "nodes", node_id, "role")
                self._check_order(kind.name, produced, index, role=node.role)
                self._check_inputs(node.role, kind, written, in_loop=False)
                produced.add(kind.name)
                written |= kind.writes
            else:
                assert node.loop is not None
                loop = node.loop
                agents = loop.agent_list()
                voters = 0
                for a_index, agent in enumerate(agents):
                    where: tuple[str | int, ...] = ("nodes", node_id, "loop")
                    where += ("agents", a_index, "role") if loop.agents is not None else ("role",)
                    role = self.roles.get(agent.role)
                    if role is None:
                        raise _fail(f"unknown role {agent.role!r} (roles: {', '.join(self.roles)})", *where)
                    placement = get_kind(role.reply).placement
                    voters += placement == "agent"
                    if loop.mode == "parallel" and placement != "agent":
                        agent_kinds = ", ".join(repr(k) for k in kind_names("agent"))
                        raise _fail(f"the agents of a parallel loop vote: they need a role whose reply is {agent_kinds}; {agent.role!r} replies {role.reply!r}", *where)
                    if placement != "agent" and not get_kind(role.reply).writes:
                        # a step that rewrites the record's own fields (a draft, a refiner) runs once, outside loops
                        agent_kinds = ", ".join(repr(k) for k in kind_names("agent"))
                        passing = ", ".join(repr(k) for k in kind_names("step") if get_kind(k).writes)
                        raise _fail(
                            f"{agent.role!r} replies {role.reply!r}, which runs once in the flow, not in a loop: a loop agent deliberates "
                            f"({agent_kinds}) or passes values on to the next agent ({passing})",
                            *where,
                        )
                if voters and loop.consensus is None:
                    raise _fail("this loop's agents deliberate: give its consensus rule ('first_agree' for a sequential loop)", "nodes", node_id, "loop")
                if not voters and loop.consensus is not None:
                    raise _fail("no agent of this loop deliberates, so it has no consensus: leave 'consensus' out", "nodes", node_id, "loop", "consensus")
                for kind_name in dict.fromkeys(self.roles[a.role].reply for a in agents):
                    self._check_order(kind_name, produced, index, role=None)
                # an agent reads what any agent of its loop writes (from the round before, or earlier in this one)
                written |= {key for a in agents for key in get_kind(self.roles[a.role].reply).writes}
                for role_name in dict.fromkeys(a.role for a in agents):
                    self._check_inputs(role_name, get_kind(self.roles[role_name].reply), written, in_loop=True)
                produced.update(self.roles[a.role].reply for a in agents)
        return self

    def _check_inputs(self, role_name: str, kind: ReplyKind, written: set[str], *, in_loop: bool) -> None:
        """Every variable the kind reads is one the graph provides at that point."""
        available = COMMON_INPUTS | STEP_INPUTS | (AGENT_INPUTS if in_loop else frozenset()) | written | set(self.roles[role_name].params)
        missing = sorted(kind.inputs - available)
        if missing:
            raise _fail(
                f"role {role_name!r} ({kind.name}) reads {', '.join(repr(m) for m in missing)}, which no role before it writes"
                " and no 'params' entry gives",
                "roles", role_name, "reply",
            )

    def _check_order(self, kind_name: str, produced: set[str], index: int, *, role: str | None) -> None:
        """The kinds a kind needs must come earlier in flow; a ``once`` kind may appear once."""
        kind = get_kind(kind_name)
        for needed in kind.after:
            if needed not in produced:
                what = f"role {role!r} ({kind_name})" if role is not None else f"a loop of {kind_name!r} agents"
                raise _fail(f"{what} needs a {needed!r} role before it in flow", "flow", index)
        if kind.once and kind_name in produced:
            raise _fail(f"only one node may write the {kind_name}", "flow", index)


def load_graph_spec(name_or_path: str | Path) -> tuple[GraphSpec, Path]:
    """Load a shipped graph by name (``aidsafe``) or a graph file by path; returns the spec and its path."""
    try:
        path = resolve("graphs", name_or_path)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    return load_yaml_model(path, GraphSpec, kind="graph"), path
