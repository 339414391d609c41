"""What the nodes of a compiled graph do: a role call, a loop agent's turn, a round-table vote.

Every node calls its model through :func:`aidsafe.structured.call_structured` and turns the
reply into a state update through its reply kind (:mod:`aidsafe.kinds`): a role node applies
the kind's ``update``; a loop agent records the kind's ``turn``, and the loop decides from the
turns whether to stop. A failed call writes ``error`` and every later node passes through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from typing import Any, Protocol

from langgraph.runtime import Runtime
from pydantic import BaseModel

from ..kinds import Step, reply_schema
from ..models import ModelPool
from ..policies import PolicySet
from ..structured import CallOutcome, call_structured
from .binding import Binding
from .spec import AgentSpec, LoopSpec
from .state import GraphContext, PromptState

__all__ = ["NodeFn", "Nodes", "template_variables"]

class NodeFn(Protocol):
    """A node function: the state in, a partial state update out; LangGraph passes ``runtime``."""

    def __call__(self, state: PromptState, *, runtime: Runtime[GraphContext]) -> Awaitable[dict[str, Any]]: ...


def template_variables(policies: PolicySet, state: PromptState, **extra: Any) -> dict[str, Any]:
    """The variables a role's template is rendered with, from the state so far."""
    return {
        "policies": policies.policies,
        "policy_set": policies,
        "prompt": state.get("prompt", ""),
        "intents": state.get("intents") or {"explicit": [], "implicit": []},
        "thoughts": state.get("thoughts") or [],
        "response": state.get("response") or "",
        **extra,
    }


def _cited(value: Any) -> Iterator[dict[str, Any]]:
    """Every thought (``{"text", "policies"}``) anywhere in a reply."""
    if isinstance(value, dict):
        if "text" in value and "policies" in value:
            yield value
        for inner in value.values():
            yield from _cited(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _cited(inner)


def _faults(stage: str, thoughts: Any, known: set[str]) -> list[dict[str, Any]]:
    faults = []
    for thought in _cited(thoughts):
        for pid in thought.get("policies", []):
            if pid not in known:
                faults.append({"stage": stage, "kind": "unknown_policy_id", "detail": f"thought cites {pid!r}, not in the pack"})
    return faults


def _error(stage: str, outcome: CallOutcome) -> dict[str, Any]:
    return {"stage": stage, "kind": outcome.error_kind or "model_error", "message": outcome.error or "unknown error", "raw": outcome.raw or None}


def _dump(reply: Any) -> dict[str, Any]:
    return reply.model_dump() if isinstance(reply, BaseModel) else dict(reply)


class Nodes:
    """Makes the node functions of one compiled graph."""

    def __init__(self, policies: PolicySet, models: ModelPool) -> None:
        self.policies = policies
        self.known = set(policies.ids)
        self.models = models
        """The pool used when a run passes no :class:`GraphContext`."""

    async def call(self, binding: Binding, state: PromptState, runtime: Runtime[GraphContext], **extra: Any) -> CallOutcome:
        """Render the binding's messages for the state, call its model, parse the reply."""
        kind = binding.kind
        context = kind.context(state) if kind.context is not None else None
        schema = reply_schema(kind, self.policies.ids, context) if context else binding.schema
        messages = binding.template.render(template_variables(self.policies, state, schema=schema, **extra))
        pool = runtime.context.models if runtime.context is not None else self.models
        return await call_structured(pool.get(binding.settings), messages, kind=kind, schema=schema, context=context)

    # -- role nodes ---------------------------------------------------------------------------

    def step(self, node_id: str, binding: Binding) -> NodeFn:
        update_state = binding.kind.update
        assert update_state is not None, f"reply kind {binding.kind.name!r} has no state update"

        async def run(state: PromptState, *, runtime: Runtime[GraphContext]) -> dict[str, Any]:
            if state.get("error"):
                return {}
            outcome = await self.call(binding, state, runtime)
            update: dict[str, Any] = {"usage": {node_id: outcome.usage}}
            if outcome.reply is None:
                update["error"] = _error(node_id, outcome)
                return update
            reply = _dump(outcome.reply)
            update.update(update_state(Step(stage=node_id, state=state, reply=reply)))
            faults = _faults(node_id, reply, self.known)
            if faults:
                update["faults"] = faults
            return update

        return run

    # -- loops --------------------------------------------------------------------------------

    @staticmethod
    def _turn(binding: Binding, agent: AgentSpec, round_no: int, outcome: CallOutcome) -> dict[str, Any]:
        make_turn = binding.kind.turn
        assert make_turn is not None, f"reply kind {binding.kind.name!r} has no turn"
        turn = make_turn(_dump(outcome.reply)) if outcome.reply is not None else {"agreed": False, "thoughts": [], "response": ""}
        return {"round": round_no, "agent": agent.name, "model": binding.settings.label(), **turn, "usage": outcome.usage}

    def sequential_agent(self, loop_id: str, loop: LoopSpec, index: int, binding: Binding) -> NodeFn:
        """An agent of a sequential loop: speaks in turn; agreeing ends the loop (consensus)."""
        agents = loop.agent_list()
        agent = agents[index]

        async def run(state: PromptState, *, runtime: Runtime[GraphContext]) -> dict[str, Any]:
            if state.get("error"):
                return {}
            turns = state.get("turns", 0)
            round_no = turns // len(agents) + 1
            outcome = await self.call(binding, state, runtime, agent=agent.name, round=round_no, max_rounds=loop.max_rounds)
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
        """An agent of a parallel loop: answers every round; the vote node counts the answers."""
        agent = loop.agent_list()[index]

        async def run(state: PromptState, *, runtime: Runtime[GraphContext]) -> dict[str, Any]:
            if state.get("error"):
                return {}
            round_no = state.get("rounds", 0) + 1
            outcome = await self.call(binding, state, runtime, agent=agent.name, round=round_no, max_rounds=loop.max_rounds)
            vote: dict[str, Any] = {"index": index, "turn": self._turn(binding, agent, round_no, outcome)}
            if outcome.reply is None:
                vote["error"] = _error(f"{loop_id}/{agent.name}", outcome)
            return {"votes": [vote], "usage": {loop_id: outcome.usage}}

        return run

    def vote(self, loop_id: str, loop: LoopSpec) -> NodeFn:
        """Apply the consensus rule to a round's turns; without consensus, merge the dissent."""

        async def run(state: PromptState, *, runtime: Runtime[GraphContext]) -> dict[str, Any]:
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
