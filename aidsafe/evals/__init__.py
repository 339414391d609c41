"""Safety evaluation of trained models (the paper's Table 2), on inspect_ai (extra ``[eval]``).

- :mod:`aidsafe.evals.data` reads the benchmarks' files in their upstream formats (no inspect needed).
- :mod:`aidsafe.evals.kinds` registers the graders' reply kinds; ``prompts/eval_*.jinja`` are their rubrics.
- :mod:`aidsafe.evals.tasks` holds the inspect tasks, scorers and metrics (``aidsafe/<task>`` for
  ``inspect eval``; :mod:`aidsafe.evals._registry` is the plugin entry point).
- :mod:`aidsafe.evals.report` turns inspect logs into the Table 2 layout; :mod:`aidsafe.evals.calibration`
  compares a grader with human labels.
"""
