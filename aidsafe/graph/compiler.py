"""Compile a graph file into a LangGraph ``StateGraph``: one generic compiler for every topology.

- a ``role`` node becomes one LangGraph node calling that role;
- a ``sequential`` loop becomes one node per agent in a ring; each agent's conditional edge
  leaves the loop on consensus or when the round budget is spent;
- a ``parallel`` loop becomes one node per agent, fanned out from the node before it (a LangGraph
  super-step runs them concurrently), joined by a ``vote`` node that applies the consensus rule
  and either leaves the loop or fans out again.

The round counter lives in the state and every exit writes ``stop_reason``; LangGraph's
``recursion_limit`` is sized from the nodes per round times the rounds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph

from ..cache import ResponseCache
from ..models import ChatModel, ModelSettings, check_settings, make_model
from ..policies import PolicySet, load_policy_set
from ..replies import reply_schema
from ..resources import builtin_dir
from ..templates import RoleTemplate, load_template
from ..errors import ConfigError
from .spec import AgentSpec, GraphSpec, LoopSpec, load_graph_spec
from .state import PromptState
from .structured import CallOutcome, call_structured

__all__ = ["Binding", "CompiledAidsafe", "compile_graph", "exit_label"]
NodeFn = Callable[[PromptState], Awaitable[dict[str, Any]]]
ModelFactory = Callable[[ModelSettings], ChatModel]


@dataclass
class Binding:
    """A role (or loop agent) bound to its template, reply schema and model settings."""

    name: str
    role: str
    kind: str
    template: RoleTemplate
    schema: dict[str, Any]
    settings: ModelSettings
    _models: dict[ModelSettings, ChatModel] = field(repr=False, default_factory=dict)
    _factory: ModelFactory = field(repr=False, default=make_model)

    @property
    def model(self) -> ChatModel:
        """The chat model, created on first use and shared by bindings with equal settings."""
        if self.settings not in self._models:
            self._models[self.settings] = self._factory(self.settings)
        return self._models[self.settings]


def _template_path(graph_path: Path, name: str) -> Path:
    local = (graph_path.parent / name).resolve()
    if local.is_file():
        return local
    shipped = builtin_dir("prompts") / name
    return shipped if shipped.is_file() else local


@dataclass
class CompiledAidsafe:
    """A compiled graph, ready to run prompts: the LangGraph object plus what records need."""

    spec: GraphSpec
    path: Path
    policies: PolicySet
    bindings: dict[str, Binding]
    graph: Any
    """The compiled LangGraph (``CompiledStateGraph``): stream it, draw it, checkpoint it."""
    recursion_limit: int
    cache: ResponseCache | None = None
    """Response cache used by every call (set by :meth:`aidsafe.Pipeline.agenerate`)."""

    @property
    def models(self) -> dict[str, str]:
        """``backend:model`` per role and agent."""
        return {name: b.settings.label() for name, b in self.bindings.items()}

    def mermaid(self) -> str:
        """Mermaid text of the compiled LangGraph (offline: no web service)."""
        return str(self.graph.get_graph().draw_mermaid())

    def variables(self, state: PromptState, **extra: Any) -> dict[str, Any]:
        """The template variables for the current state."""
        return {
            "policies": self.policies.policies,
            "policy_set": self.policies,
            "prompt": state["prompt"],
            "intents": state.get("intents") or {"explicit": [], "implicit": []},
            "thoughts": state.get("thoughts") or [],
            "response": state.get("response") or "",
            **extra,
        }

    async def aclose(self) -> None:
        """Close the models' connections."""
        seen: set[int] = set()
        for binding in self.bindings.values():
            for model in binding._models.values():
                if id(model) not in seen:
                    seen.add(id(model))
                    await model.aclose()


def _faults(stage: str, thoughts: list[dict[str, Any]], known: set[str]) -> list[dict[str, Any]]:
    faults = []
    for thought in thoughts:
        for pid in thought.get("policies", []):
            if pid not in known:
                faults.append({"stage": stage, "kind": "unknown_policy_id", "detail": f"thought cites {pid!r}, not in the pack"})
    return faults


def _error(stage: str, outcome: CallOutcome) -> dict[str, Any]:
    return {"stage": stage, "kind": outcome.error_kind or "model_error", "message": outcome.error or "unknown error", "raw": outcome.raw or None}


class _Builder:
    """Turns a spec into nodes and edges of a ``StateGraph``."""

    def __init__(self, compiled: CompiledAidsafe) -> None:
        self.c = compiled
        self.known = set(compiled.policies.ids)
        self.builder: StateGraph[PromptState] = StateGraph(PromptState)

    async def _call(self, binding: Binding, state: PromptState, context: dict[str, Any] | None = None, **extra: Any) -> CallOutcome:
        schema = binding.schema
        if context and "thought_count" in context:
            schema = reply_schema(binding.kind, self.c.policies.ids, thought_count=context["thought_count"])
        messages = binding.template.render(self.c.variables(state, schema=schema, **extra))
        return await call_structured(binding.model, messages, kind=binding.kind, schema=schema, context=context, cache=self.c.cache)

    # -- role nodes ---------------------------------------------------------------------------

    def step(self, node_id: str, binding: Binding) -> NodeFn:
        async def run(state: PromptState) -> dict[str, Any]:
            if state.get("error"):
                return {}
            thoughts = state.get("thoughts") or []
            context = {"thought_count": len(thoughts)} if binding.kind == "refinement" else None
            outcome = await self._call(binding, state, context)
            update: dict[str, Any] = {"usage": {node_id: outcome.usage}}
            if outcome.reply is None:
                update["error"] = _error(node_id, outcome)
                return update
            reply = outcome.reply.model_dump()
            if binding.kind == "intents":
                update["intents"] = reply
            elif binding.kind == "draft":
                update["thoughts"] = reply["thoughts"]
                update["response"] = reply["response"]
                update["faults"] = _faults(node_id, reply["thoughts"], self.known)
            elif binding.kind == "refinement":
                reasons = {r["index"]: r["reason"] for r in reply["removed"]}
                update["refined"] = [t for i, t in enumerate(thoughts, 1) if i not in reasons]
                update["removed"] = [{**t, "reason": reasons[i]} for i, t in enumerate(thoughts, 1) if i in reasons]
                if reply["response"].strip():
                    update["response"] = reply["response"]
            return update

        return run

    # -- loops --------------------------------------------------------------------------------

    def _turn(self, binding: Binding, agent: AgentSpec, round_no: int, outcome: CallOutcome) -> dict[str, Any]:
        reply = outcome.reply.model_dump() if outcome.reply is not None else {"agree": False, "thoughts": [], "response": ""}
        return {
            "round": round_no,
            "agent": agent.name,
            "model": binding.settings.label(),
            "agreed": bool(reply["agree"]),
            "thoughts": [] if reply["agree"] else reply["thoughts"],
            "response": "" if reply["agree"] else reply["response"],
            "usage": outcome.usage,
        }

    def sequential_agent(self, loop_id: str, loop: LoopSpec, index: int, binding: Binding) -> NodeFn:
        agents = loop.agent_list()
        agent = agents[index]

        async def run(state: PromptState) -> dict[str, Any]:
            if state.get("error"):
                return {}
            turns = state.get("turns", 0)
            round_no = turns // len(agents) + 1
            outcome = await self._call(binding, state, agent=agent.name, round=round_no, max_rounds=loop.max_rounds)
            update: dict[str, Any] = {"usage": {loop_id: outcome.usage}, "turns": turns + 1, "rounds": round_no}
            if outcome.reply is None:
                update["error"] = _error(f"{loop_id}/{agent.name}", outcome)
                return update
            turn = self._turn(binding, agent, round_no, outcome)
            update["deliberation"] = [turn]
            update["faults"] = _faults(f"{loop_id}/{agent.name}", turn["thoughts"], self.known)
            if turn["agreed"]:
                update["stop_reason"] = "consensus"
            else:
                update["thoughts"] = [*(state.get("thoughts") or []), *turn["thoughts"]]
                if turn["response"].strip():
                    update["response"] = turn["response"]
                if turns + 1 >= len(agents) * loop.max_rounds:
                    update["stop_reason"] = "budget"
            return update

        return run

    def parallel_agent(self, loop_id: str, loop: LoopSpec, index: int, binding: Binding) -> NodeFn:
        agent = loop.agent_list()[index]

        async def run(state: PromptState) -> dict[str, Any]:
            if state.get("error"):
                return {}
            round_no = state.get("rounds", 0) + 1
            outcome = await self._call(binding, state, agent=agent.name, round=round_no, max_rounds=loop.max_rounds)
            vote: dict[str, Any] = {"index": index, "turn": self._turn(binding, agent, round_no, outcome)}
            if outcome.reply is None:
                vote["error"] = _error(f"{loop_id}/{agent.name}", outcome)
            return {"votes": [vote], "usage": {loop_id: outcome.usage}}

        return run

    def vote(self, loop_id: str, loop: LoopSpec) -> NodeFn:
        async def run(state: PromptState) -> dict[str, Any]:
            if state.get("error"):
                return {"votes": None}
            votes = sorted(state.get("votes") or [], key=lambda v: v["index"])
            round_no = state.get("rounds", 0) + 1
            update: dict[str, Any] = {"votes": None, "rounds": round_no}
            failed = [v["error"] for v in votes if "error" in v]
            if failed:
                update["error"] = failed[0]
                return update
            turns = [v["turn"] for v in votes]
            update["deliberation"] = turns
            update["faults"] = [f for t in turns for f in _faults(f"{loop_id}/{t['agent']}", t["thoughts"], self.known)]
            agreeing = sum(1 for t in turns if t["agreed"])
            if loop.agreed(agreeing):
                update["stop_reason"] = "consensus"
                return update
            dissent = [t for t in turns if not t["agreed"]]
            update["thoughts"] = [*(state.get("thoughts") or []), *(th for t in dissent for th in t["thoughts"])]
            proposed = [t["response"] for t in dissent if t["response"].strip()]
            if proposed:
                update["response"] = proposed[0]
            if round_no >= loop.max_rounds:
                update["stop_reason"] = "budget"
            return update

        return run

    # -- wiring -------------------------------------------------------------------------------

    def build(self) -> tuple[Any, int]:
        spec = self.c.spec
        b = self.builder
        entries: dict[str, list[str]] = {}
        steps_per_pass = 0
        for node_id in spec.flow:
            node = spec.nodes[node_id]
            if node.role is not None:
                b.add_node(node_id, self.step(node_id, self.c.bindings[node.role]))
                entries[node_id] = [node_id]
                steps_per_pass += 1
                continue
            loop = node.loop
            assert loop is not None
            agents = loop.agent_list()
            names = [f"{node_id}_{a.name}" for a in agents]
            for index, (agent, name) in enumerate(zip(agents, names)):
                binding = self.c.bindings[f"{node_id}.{agent.name}"]
                factory = self.sequential_agent if loop.mode == "sequential" else self.parallel_agent
                b.add_node(name, factory(node_id, loop, index, binding))
            if loop.mode == "sequential":
                entries[node_id] = names[:1]
                steps_per_pass += len(names) * loop.max_rounds
            else:
                b.add_node(f"{node_id}_vote", self.vote(node_id, loop))
                b.add_edge(names, f"{node_id}_vote")
                entries[node_id] = names
                steps_per_pass += 2 * loop.max_rounds
        for position, node_id in enumerate(spec.flow):
            following = entries[spec.flow[position + 1]] if position + 1 < len(spec.flow) else [END]
            if position == 0:
                for entry in entries[node_id]:
                    b.add_edge(START, entry)
            node = spec.nodes[node_id]
            if node.loop is None:
                for target in following:
                    b.add_edge(node_id, target)
            else:
                self._wire_loop(node_id, node.loop, following)
        return b.compile(name=spec.name), steps_per_pass + len(spec.flow) + 5

    def _wire_loop(self, node_id: str, loop: LoopSpec, following: list[str]) -> None:
        names = [f"{node_id}_{a.name}" for a in loop.agent_list()]
        exit_to = following if len(following) > 1 else following[0]
        label = exit_label(loop)

        def leave_or_continue(state: PromptState) -> str:
            return label if state.get("error") or state.get("stop_reason") else "continue"

        if loop.mode == "sequential":
            for index, name in enumerate(names):
                nxt = names[(index + 1) % len(names)]
                self.builder.add_conditional_edges(name, leave_or_continue, {label: exit_to, "continue": nxt})  # type: ignore[dict-item]
            return
        labels = {f"next round: {name}": name for name in names}

        def after_vote(state: PromptState) -> str | list[str]:
            if state.get("error") or state.get("stop_reason"):
                return label
            return list(labels)

        self.builder.add_conditional_edges(f"{node_id}_vote", after_vote, {label: exit_to, **labels})  # type: ignore[dict-item]


def exit_label(loop: LoopSpec) -> str:
    """Label of a loop's exit edge in pictures: the consensus rule and the round budget."""
    rule = {"first_agree": "first agreement", "at_least": f"at least {loop.min_agree} agree"}.get(loop.consensus, loop.consensus)
    return f"consensus ({rule}) or budget of {loop.max_rounds} rounds"


def _bind(
    spec: GraphSpec,
    path: Path,
    policies: PolicySet,
    settings: ModelSettings,
    role_models: dict[str, str],
    factory: ModelFactory,
) -> dict[str, Binding]:
    unknown = set(role_models) - set(spec.roles) - {
        a.name for n in spec.nodes.values() if n.loop for a in n.loop.agent_list()
    }
    if unknown:
        raise ConfigError(f"--role-model names {', '.join(sorted(unknown))}, which are neither roles nor agents of this graph", file=path)
    cache: dict[ModelSettings, ChatModel] = {}
    templates: dict[str, RoleTemplate] = {}

    def binding(name: str, role_name: str, model_name: str | None) -> Binding:
        role = spec.roles[role_name]
        if role_name not in templates:
            templates[role_name] = load_template(_template_path(path, role.template), reply=role.reply, role=role_name)
        chosen = role_models.get(name) or model_name or role_models.get(role_name) or role.model or settings.model
        return Binding(
            name=name,
            role=role_name,
            kind=role.reply,
            template=templates[role_name],
            schema=reply_schema(role.reply, policies.ids),
            settings=settings.with_model(chosen),
            _models=cache,
            _factory=factory,
        )

    bindings: dict[str, Binding] = {}
    for node_id in spec.flow:
        node = spec.nodes[node_id]
        if node.role is not None:
            bindings[node.role] = binding(node.role, node.role, None)
        else:
            assert node.loop is not None
            for agent in node.loop.agent_list():
                bindings[f"{node_id}.{agent.name}"] = binding(agent.name, agent.role, agent.model)
    return bindings


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
    bindings = _bind(spec, path, pack, settings, role_models or {}, model_factory)
    if model_factory is make_model:
        for binding in bindings.values():
            check_settings(binding.settings)
    compiled = CompiledAidsafe(spec=spec, path=path, policies=pack, bindings=bindings, graph=None, recursion_limit=0)
    compiled.graph, compiled.recursion_limit = _Builder(compiled).build()
    return compiled

