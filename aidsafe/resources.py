"""Find the shipped graphs, prompts and policies, in a wheel or in a source checkout.

A non-editable install carries them under ``aidsafe/_data/<kind>``; an editable install or a
source checkout reads the top-level folders of the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

__all__ = ["Kind", "builtin_dir", "list_builtin", "resolve"]

Kind = Literal["graphs", "prompts", "policies"]

_PACKAGE = Path(__file__).resolve().parent
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "graphs": (".yaml", ".yml"),
    "policies": (".yaml", ".yml"),
    "prompts": (".jinja", ".jinja2"),
}


def builtin_dir(kind: Kind) -> Path:
    """The folder holding the shipped files of ``kind``."""
    packaged = _PACKAGE / "_data" / kind
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / kind


def list_builtin(kind: Kind) -> list[str]:
    """Names (file stems) of the shipped files of ``kind``."""
    folder = builtin_dir(kind)
    return sorted(p.stem for p in folder.iterdir() if p.suffix in _SUFFIXES[kind]) if folder.is_dir() else []


def resolve(kind: Kind, name_or_path: str | Path) -> Path:
    """Turn a shipped name (``aidsafe``) or a path (``./my.yaml``) into a path.

    A value containing a path separator or a suffix, or naming an existing file, is a path;
    anything else is looked up among the shipped files. Unknown names raise ``FileNotFoundError``
    listing what is available.
    """
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.is_file() or "/" in text or "\\" in text or candidate.suffix in _SUFFIXES[kind]:
        return candidate
    folder = builtin_dir(kind)
    for suffix in _SUFFIXES[kind]:
        path = folder / f"{text}{suffix}"
        if path.is_file():
            return path
    available = ", ".join(list_builtin(kind)) or "none"
    noun = {"graphs": "graph", "prompts": "prompt template", "policies": "policy pack"}[kind]
    raise FileNotFoundError(f"no shipped {noun} named {text!r} (available: {available}); pass a file path instead")
