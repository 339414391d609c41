"""What the nodes of a compiled graph do: a role call, a loop agent's turn, a round-table vote.

Every node calls its model through :func:`aidsafe.structured.call_structured` and turns the
reply into a state update through its reply kind (:mod:`aidsafe.kinds`): a role node applies
the kind's ``update``; a loop agent records the kind's ``turn``, and the loop decides from the
turns whether to stop. A failed call writes ``error`` and every later node passes through.

Each node function is made from its plan entry (:class:`~aidsafe.graph.plan.PlanNode`): the stage
it names in errors and faults and the key of its tokens in ``usage`` are the entry's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Iterator
from typing import Any, Protocol

from langgraph.runtime import Runtime
from pydantic import BaseModel

from ..kinds import Step, reply_schema
from ..models import ModelPool
from ..policies import PolicySet
from ..structured import CallOutcome, call_structured
from .binding import Binding
from .plan import PlanNode
from .spec import AgentSpec, LoopSpec
from .state import GraphContext, PromptState

__all__ = ["NodeFn", "Nodes", "loop_variables", "merge_turns", "template_variables"]

class NodeFn(Protocol):
    """A node function: the state in, a partial state update out; LangGraph passes ``runtime``."""

    def __call__(self, state: PromptState, *, runtime: Runtime[GraphContext]) -> Awaitable[dict[str, Any]]: ...


def template_variables(policies: PolicySet, state: PromptState, data_keys: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    """The variables a role's template is rendered with, from the state so far: the recipe's, the
    values kinds wrote under ``data`` (``data_keys`` not written yet are None), and ``extra``."""
    return {
        "policies": policies.policies,
        "policy_set": policies,
        "prompt": state.get("prompt", ""),
        "intents": state.get("intents") or {"explicit": [], "implicit": []},
        "thoughts": state.get("thoughts") or [],
        "response": state.get("response") or "",
        "deliberation": state.get("deliberation") or [],
        "critiques": state.get("deliberation") or [],  # a node passes the budgeted history instead
        "critiques_omitted": 0,
        **dict.fromkeys(data_keys),
        **(state.get("data") or {}),
        **extra,
    }


def loop_variables(loop: LoopSpec, agent: str, round_no: int) -> dict[str, Any]:
    """What a loop agent's template learns about its place: name, round, budget, the other agents, the rule."""
    return {
        "agent": agent,
        "round": round_no,
        "max_rounds": loop.max_rounds,
        "agents": len(loop.agent_list()),
        "mode": loop.mode,
        "consensus": loop.rule(),
    }


HISTORY_CHARS = 8000
"""Default budget of a prompt's critique history (``critiques``), in characters (about 2,000
tokens) of critique text: the newest turn is always shown, earlier ones while they fit, the rest
counted. A role's
``params: {history_chars: N}`` changes it."""


CRITIQUE_FIELDS = ("intents", "policies", "flaws", "refusal")


def _shown_size(turn: dict[str, Any]) -> int:
    """Characters of a turn the templates print: its critique, and an outvoted agent's response."""
    critique = turn.get("critique") or {}
    return sum(len(str(critique.get(k, ""))) for k in CRITIQUE_FIELDS) + (len(turn.get("response") or "") if turn.get("outvoted") else 0)


def _shortened(turn: dict[str, Any], budget: int) -> dict[str, Any]:
    """The turn with its critique fields (and proposed response) cut to share ``budget`` characters."""
    critique = dict(turn.get("critique") or {})
    parts = [k for k in CRITIQUE_FIELDS if critique.get(k)] + (["response"] if turn.get("outvoted") and turn.get("response") else [])
    each = max(budget // max(len(parts), 1), 40)
    cut = {k: (v if len(str(v)) <= each else str(v)[: each - 1] + "…") for k, v in critique.items()}
    response = turn.get("response") or ""
    return {**turn, "critique": cut or None, "response": response if len(response) <= each else response[: each - 1] + "…", "shortened": True}


def critique_history(turns: list[dict[str, Any]], budget: int, *, minority: bool = True) -> tuple[list[dict[str, Any]], int]:
    """The turns a prompt shows (each with its critique, verdict and changes) within ``budget``
    characters of what the templates print, in order, and how many earlier ones were left out.

    The newest turn is always shown (its fields shortened when it alone exceeds the budget); older
    turns are added, newest first, while they fit. ``minority`` False leaves out the turns of
    outvoted agents (a round-table with ``minority: drop``)."""
    shown = [t for t in turns if minority or not t.get("outvoted")]
    if not shown:
        return [], 0
    newest = shown[-1]
    kept = [newest if _shown_size(newest) <= budget else _shortened(newest, budget)]
    used = _shown_size(kept[0])
    for turn in reversed(shown[:-1]):
        size = _shown_size(turn)
        if used + size > budget:
            break
        kept.append(turn)
        used += size
    return kept[::-1], len(shown) - len(kept)


def merge_turns(thoughts: list[dict[str, Any]], turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The thoughts after some turns: each turn's ``superseded`` marks applied to the thoughts it
    was shown (numbers never change: the list only grows), then its new thoughts appended."""
    merged = [dict(t) for t in thoughts]
    for turn in turns:
        for mark in turn["superseded"]:
            index = mark["index"] - 1
            if 0 <= index < len(merged) and not merged[index].get("superseded"):
                merged[index]["superseded"] = {"by": turn["agent"], "round": turn["round"], "reason": mark["reason"]}
        merged.extend(turn["thoughts"])
    return merged


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


def _agent(node: PlanNode, loop: LoopSpec) -> tuple[int, AgentSpec]:
    """A loop agent's position and spec, from its plan entry."""
    assert node.index is not None, f"{node.id} is not a loop agent"
    agent = loop.agent_list()[node.index]
    assert agent.name == node.agent, (node, agent)
    return node.index, agent


def _dump(reply: Any) -> dict[str, Any]:
    return reply.model_dump() if isinstance(reply, BaseModel) else dict(reply)


class Nodes:
    """Makes the node functions of one compiled graph."""

    def __init__(self, policies: PolicySet, models: ModelPool, data_keys: frozenset[str] = frozenset(), *, minority: bool = True) -> None:
        self.minority = minority
        """Whether role nodes after the loop see the outvoted agents' turns (``minority: keep``)."""
        self.policies = policies
        self.known = set(policies.ids)
        self.models = models
        """The pool used when a run passes no :class:`GraphContext`."""
        self.data_keys = data_keys
        """Every key the graph's kinds write under ``data`` (None in templates until written)."""

    def history(self, binding: Binding, state: PromptState, stage: str, *, minority: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The critique history a prompt shows (see :func:`critique_history`) and, when older turns
        were left out for the budget, a ``history_truncated`` fault that counts them."""
        budget = int(binding.options.get("history_chars", HISTORY_CHARS))
        kept, omitted = critique_history(state.get("deliberation") or [], budget, minority=minority)
        faults = []
        if omitted:
            faults.append({"stage": stage, "kind": "history_truncated", "detail": f"{omitted} earlier turn(s) left out of the prompt (history_chars {budget})"})
        return {"critiques": kept, "critiques_omitted": omitted}, faults

    async def call(self, binding: Binding, state: PromptState, runtime: Runtime[GraphContext], **extra: Any) -> CallOutcome:
        """Render the binding's messages for the state, call its model, parse the reply."""
        kind = binding.kind
        options = binding.options
        context = {**{k: options[k] for k, _ in kind.options}, **kind.context(state)} if kind.context is not None else None
        schema = reply_schema(kind, self.policies.ids, context) if context else binding.schema
        variables = template_variables(self.policies, state, self.data_keys, schema=schema, **options, **extra)
        pool = runtime.context.models if runtime.context is not None else self.models
        return await call_structured(
            pool.get(binding.settings), binding.template.render(variables), kind=kind, schema=schema, context=context,
            template=binding.template, data=state.get("prompt", ""),
        )

    # -- role nodes ---------------------------------------------------------------------------

    def step(self, node: PlanNode, binding: Binding) -> NodeFn:
        """A role node: one call, its kind's state update applied."""
        stage = node.stage
        update_state = binding.kind.update
        assert update_state is not None, f"reply kind {binding.kind.name!r} has no state update"

        async def run(state: PromptState, *, runtime: Runtime[GraphContext]) -> dict[str, Any]:
            if state.get("error"):
                return {}
            history, faults = self.history(binding, state, stage, minority=self.minority)
            outcome = await self.call(binding, state, runtime, **history)
            update: dict[str, Any] = {"usage": {node.flow: outcome.usage}}
            if outcome.reply is None:
                update["error"] = _error(stage, outcome)
                return update
            reply = _dump(outcome.reply)
            update.update(update_state(Step(stage=stage, state=state, reply=reply, logprobs=outcome.logprobs)))
            faults += update.pop("faults", []) + _faults(stage, reply, self.known)
            if faults:
                update["faults"] = faults
            return update

        return run

    def loop_step(self, node: PlanNode, loop: LoopSpec, binding: Binding) -> NodeFn:
        """An agent of a sequential loop whose kind updates the state instead of deliberating: its
        update is applied each turn; a ``stop_reason`` in it ends the loop, else the budget does."""
        agents = loop.agent_list()
        _, agent = _agent(node, loop)
        stage, loop_id = node.stage, node.flow
        update_state = binding.kind.update
        assert update_state is not None, f"reply kind {binding.kind.name!r} has no state update"

        async def run(state: PromptState, *, runtime: Runtime[GraphContext]) -> dict[str, Any]:
            if state.get("error"):
                return {}
            turns = state.get("turns", 0)
            round_no = turns // len(agents) + 1
            history, _ = self.history(binding, state, stage)
            outcome = await self.call(binding, state, runtime, **loop_variables(loop, agent.name, round_no), **history)
            update: dict[str, Any] = {"usage": {loop_id: outcome.usage}, "turns": turns + 1, "rounds": round_no}
            if outcome.reply is None:
                update["error"] = _error(stage, outcome)
                return update
            reply = _dump(outcome.reply)
            update.update(update_state(Step(stage=stage, state=state, reply=reply, round=round_no, logprobs=outcome.logprobs)))
            faults = _faults(stage, reply, self.known)
            if faults:
                update["faults"] = faults
            if not update.get("stop_reason") and turns + 1 >= len(agents) * loop.max_rounds:
                update["stop_reason"] = "budget"
            return update

        return run

    # -- loops --------------------------------------------------------------------------------

    def _turn(self, binding: Binding, agent: AgentSpec, round_no: int, outcome: CallOutcome, stage: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The recorded turn (its thoughts marked with agent and round) and the faults it raises."""
        make_turn = binding.kind.turn
        assert make_turn is not None, f"reply kind {binding.kind.name!r} has no turn"
        if outcome.reply is None:
            turn: dict[str, Any] = {"critique": None, "agreed": False, "superseded": [], "thoughts": [], "response": ""}
        else:
            turn = make_turn(_dump(outcome.reply))
        faults = [{"stage": stage, **f} for f in turn.pop("faults", [])]
        faults += _faults(stage, turn["thoughts"], self.known)
        turn["thoughts"] = [{**t, "by": agent.name, "round": round_no} for t in turn["thoughts"]]
        record = {"round": round_no, "agent": agent.name, "model": binding.settings.label(), **turn, "usage": outcome.usage}
        return record, faults

    def sequential_agent(self, node: PlanNode, loop: LoopSpec, binding: Binding) -> NodeFn:
        """An agent of a sequential loop: reviews the previous turn; agreeing ends the loop (consensus)."""
        agents = loop.agent_list()
        _, agent = _agent(node, loop)
        stage, loop_id = node.stage, node.flow

        async def run(state: PromptState, *, runtime: Runtime[GraphContext]) -> dict[str, Any]:
            if state.get("error"):
                return {}
            turns = state.get("turns", 0)
            round_no = turns // len(agents) + 1
            history, truncated = self.history(binding, state, stage, minority=loop.minority == "keep")
            outcome = await self.call(binding, state, runtime, **loop_variables(loop, agent.name, round_no), **history)
            update: dict[str, Any] = {"usage": {loop_id: outcome.usage}, "turns": turns + 1, "rounds": round_no}
            if outcome.reply is None:
                update["error"] = _error(stage, outcome)
                return update
            turn, faults = self._turn(binding, agent, round_no, outcome, stage)
            update["deliberation"] = [turn]
            update["faults"] = truncated + faults
            if turn["agreed"]:
                if loop.may_stop(round_no, turns + 1):  # always true by the last turn: min_rounds <= max_rounds
                    update["stop_reason"] = "consensus"
            else:
                update["thoughts"] = merge_turns(state.get("thoughts") or [], [turn])
                if turn["response"].strip():
                    update["response"] = turn["response"]
                if turns + 1 >= len(agents) * loop.max_rounds:
                    update["stop_reason"] = "budget"
            return update

        return run

    def parallel_agent(self, node: PlanNode, loop: LoopSpec, binding: Binding) -> NodeFn:
        """An agent of a parallel loop: answers every round; the vote node counts the answers."""
        index, agent = _agent(node, loop)
        stage, loop_id = node.stage, node.flow

        async def run(state: PromptState, *, runtime: Runtime[GraphContext]) -> dict[str, Any]:
            if state.get("error"):
                return {}
            round_no = state.get("rounds", 0) + 1
            history, truncated = self.history(binding, state, stage, minority=loop.minority == "keep")
            outcome = await self.call(binding, state, runtime, **loop_variables(loop, agent.name, round_no), **history)
            turn, faults = self._turn(binding, agent, round_no, outcome, stage)
            vote: dict[str, Any] = {"index": index, "turn": turn, "faults": truncated + faults}
            if outcome.reply is None:
                vote["error"] = _error(stage, outcome)
            return {"votes": [vote], "usage": {loop_id: outcome.usage}}

        return run

    def vote(self, node: PlanNode, loop: LoopSpec) -> NodeFn:
        """Apply the consensus rule to a round's turns. Without consensus the dissent is merged (new
        and superseded thoughts in agent order; the first dissenter's response); with consensus the
        outvoted agents' thoughts are merged too when the loop keeps its minority."""

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
            update["faults"] = [f for v in votes for f in v["faults"]]
            dissent = [t for t in turns if not t["agreed"]]
            if loop.agreed(len(turns) - len(dissent)):
                for turn in dissent:
                    turn["outvoted"] = True
                if dissent and loop.minority == "keep":
                    update["thoughts"] = merge_turns(state.get("thoughts") or [], dissent)
                if loop.may_stop(round_no):  # always true by the last round: min_rounds <= max_rounds
                    update["stop_reason"] = "consensus"
                return update
            update["thoughts"] = merge_turns(state.get("thoughts") or [], dissent)
            proposed = [t["response"] for t in dissent if t["response"].strip()]
            if proposed:
                update["response"] = proposed[0]
            if round_no >= loop.max_rounds:
                update["stop_reason"] = "budget"
            return update

        return run
