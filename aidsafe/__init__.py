"""aidsafe: policy-embedded chain-of-thought safety data by multi-agent deliberation (AIDSAFE).

The public API: build a :class:`Pipeline` from a graph file, a policy pack and model settings,
then run prompts (:meth:`Pipeline.run_one`, :meth:`Pipeline.run`) or whole files
(:meth:`Pipeline.generate`).
"""

from __future__ import annotations

from .errors import AidsafeError, ConfigError, InputError, ModelCallError
from .graph.compiler import CompiledAidsafe, compile_graph
from .graph.spec import GraphSpec, load_graph_spec
from .inputs import PromptItem, count_prompts, read_prompts
from .models import ChatModel, Completion, FakeChatModel, ModelSettings, make_model
from .pipeline import Pipeline, RunSummary
from .policies import Policy, PolicySet, load_policy_set
from .records import Record

__version__ = "0.1.0"

__all__ = [
    "AidsafeError",
    "ChatModel",
    "CompiledAidsafe",
    "Completion",
    "ConfigError",
    "FakeChatModel",
    "GraphSpec",
    "InputError",
    "ModelCallError",
    "ModelSettings",
    "Pipeline",
    "Policy",
    "PolicySet",
    "PromptItem",
    "Record",
    "RunSummary",
    "compile_graph",
    "count_prompts",
    "load_graph_spec",
    "load_policy_set",
    "make_model",
    "read_prompts",
    "__version__",
]
