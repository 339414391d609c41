"""Engines of the file jobs (``aidsafe generate``, ``judge``, ``pairs``): where their items run.

An engine is an executor passed to :func:`aidsafe.runner.run_job`, which does everything else
(lock, remembered configuration, resume, sidecar, progress, Ctrl-C) once for both:

- ``local`` (the default, :class:`aidsafe.runner.LocalExecutor`): this process, ``--concurrency``
  items in flight, records appended to the output as they finish.
- ``ray`` (:class:`aidsafe.engines.ray_data.RayExecutor`, extra ``[ray]``): the input streamed by
  a Ray read, an actor pool of the job's workers (built from its picklable worker factory),
  records written as block files and merged once by id.

Both write the same records for the same input, and either can resume the other's output. This
package imports nothing optional: ``aidsafe.engines.ray_data`` imports Ray when it is used.
"""

from __future__ import annotations

__all__ = ["ENGINES"]

ENGINES = ("local", "ray")
"""The names ``--engine`` accepts (``aidsafe generate``, ``judge``, ``pairs``)."""
