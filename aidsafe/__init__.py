"""aidsafe: policy-embedded chain-of-thought safety data by multi-agent deliberation (AIDSAFE).

The public API: build a :class:`Pipeline` from a graph file, a policy pack and model settings,
then run prompts (:meth:`Pipeline.run_one`, :meth:`Pipeline.run`) or whole files
(:meth:`Pipeline.generate`). :class:`PairMaker` makes DPO pairs from a generation output;
:mod:`aidsafe.train` exports training sets and trains on them.
"""

from __future__ import annotations

from . import _startup  # the collector off while the package imports (see aidsafe/_startup.py)

try:
    from .errors import (
        AidsafeError,
        ConfigError,
        ConfigMismatchError,
        InputError,
        JobInterrupted,
        ModelCallError,
        OutputInUseError,
    )
    from .graph import CompiledAidsafe, GraphContext, GraphSpec, compile_graph, load_graph_spec
    from .inputs import PromptItem, count_prompts, read_prompts
    from .kinds import ReplyKind, register_kind
    from .models import ChatModel, Completion, FakeChatModel, ModelPool, ModelSettings, make_model, register_backend
    from .pairs import PairMaker, PairRecord
    from .pipeline import Pipeline
    from .policies import Policy, PolicySet, load_policy_set
    from .records import Record
    from .runner import FileJob, JobOptions, run_job
    from .summary import RunSummary
finally:
    _startup.done()

__version__ = "0.1.0"

__all__ = [
    "AidsafeError",
    "ChatModel",
    "CompiledAidsafe",
    "Completion",
    "ConfigError",
    "ConfigMismatchError",
    "FakeChatModel",
    "FileJob",
    "GraphContext",
    "GraphSpec",
    "InputError",
    "JobInterrupted",
    "JobOptions",
    "ModelCallError",
    "ModelPool",
    "ModelSettings",
    "OutputInUseError",
    "PairMaker",
    "PairRecord",
    "Pipeline",
    "Policy",
    "PolicySet",
    "PromptItem",
    "Record",
    "ReplyKind",
    "RunSummary",
    "__version__",
    "compile_graph",
    "count_prompts",
    "load_graph_spec",
    "load_policy_set",
    "make_model",
    "read_prompts",
    "register_backend",
    "register_kind",
    "run_job",
]
