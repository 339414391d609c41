"""The summary sidecar next to an output (``OUT.summary.json``): totals, and the configuration the
output was written with, so that a resume with another configuration can be refused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._atomic import atomic_write_text
from ._lines import PathLike

__all__ = ["read_sidecar", "sidecar_path", "write_sidecar"]


def sidecar_path(output: PathLike) -> Path:
    """The run summary next to an output: ``out.jsonl`` -> ``out.jsonl.summary.json``."""
    return Path(os.fspath(output) + ".summary.json")


def write_sidecar(output: PathLike, summary: dict[str, Any]) -> Path:
    """Write ``summary`` as indented JSON to :func:`sidecar_path` atomically; return that path."""
    target = sidecar_path(output)
    atomic_write_text(target, json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    return target


def read_sidecar(output: PathLike) -> dict[str, Any] | None:
    """The sidecar of ``output``, or None when there is none; a damaged one raises :class:`InputError`."""
    path = sidecar_path(output)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"summary sidecar is not JSON ({exc}); delete it or start over with --overwrite", file=path) from None
    if not isinstance(data, dict):
        raise InputError("summary sidecar is not a JSON object; delete it or start over with --overwrite", file=path)
    return data
