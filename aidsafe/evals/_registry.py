"""The inspect_ai plugin entry point (``[project.entry-points.inspect_ai] aidsafe``): importing it
registers the tasks as ``aidsafe/safety``, ``aidsafe/overrefusal``, ``aidsafe/strongreject``,
``aidsafe/utility`` and ``aidsafe/cot_faithfulness``."""

from .tasks import cot_faithfulness, overrefusal, safety, strongreject, utility

__all__ = ["cot_faithfulness", "overrefusal", "safety", "strongreject", "utility"]
