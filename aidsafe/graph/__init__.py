"""Graph files (``graphs/*.yaml``) and their compiler into LangGraph."""

from __future__ import annotations

from .binding import Binding
from .compiler import CompiledAidsafe, compile_graph, exit_label
from .spec import AgentSpec, GraphSpec, LoopSpec, NodeSpec, RoleSpec, load_graph_spec
from .state import GraphContext, PromptState, initial_state

__all__ = [
    "AgentSpec",
    "Binding",
    "CompiledAidsafe",
    "GraphContext",
    "GraphSpec",
    "LoopSpec",
    "NodeSpec",
    "PromptState",
    "RoleSpec",
    "compile_graph",
    "exit_label",
    "initial_state",
    "load_graph_spec",
]
