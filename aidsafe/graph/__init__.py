"""Graph files (``graphs/*.yaml``), their plan (one entry per LangGraph node) and their compiler into LangGraph."""

from __future__ import annotations

from .binding import Binding
from .compiler import CompiledAidsafe, compile_graph, exit_label
from .plan import ExitRule, GraphPlan, LoopPlan, PlanNode, plan_graph, word_exit
from .spec import AgentSpec, GraphSpec, LoopSpec, NodeSpec, RoleSpec, load_graph_spec
from .state import GraphContext, PromptState, initial_state

__all__ = [
    "AgentSpec",
    "Binding",
    "CompiledAidsafe",
    "ExitRule",
    "GraphContext",
    "GraphPlan",
    "GraphSpec",
    "LoopPlan",
    "LoopSpec",
    "NodeSpec",
    "PlanNode",
    "PromptState",
    "RoleSpec",
    "compile_graph",
    "exit_label",
    "initial_state",
    "load_graph_spec",
    "plan_graph",
    "word_exit",
]
