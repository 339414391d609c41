"""Engines that run ``aidsafe generate``: where the prompts of a file are run.

- ``local`` (the default): one process, ``--concurrency`` prompts in flight through the async
  graph, records appended to the output as they finish (:mod:`aidsafe.runner`).
- ``ray``: Ray Data (:mod:`aidsafe.engines.ray_data`, extra ``[ray]``): the input streamed by a
  Ray read, an actor pool of pipelines, records written as block files and merged once by id.

Both write the same records for the same input, and either can resume the other's output. This
package imports nothing optional: ``aidsafe.engines.ray_data`` imports Ray when it is used.
"""

from __future__ import annotations

__all__ = ["ENGINES"]

ENGINES = ("local", "ray")
"""The names ``aidsafe generate --engine`` accepts."""
