"""Atomic writes: a temporary file in the same folder, flushed and fsynced, then ``os.replace``."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from ._lines import Line, PathLike, lines

__all__ = ["atomic_binary", "atomic_text", "atomic_write_text", "rewrite"]


def _temp_path(path: Path) -> Path:
    """``<path>.tmp`` in the same folder, so ``os.replace`` stays on one file system."""
    return path.with_name(path.name + ".tmp")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort; not possible on every platform)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_binary(path: Path) -> Iterator[IO[bytes]]:
    """Open ``<path>.tmp`` for writing; on success fsync it and replace ``path`` with it."""
    temp = _temp_path(path)
    try:
        with temp.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_text(path: PathLike, *, newline: str | None = None) -> Iterator[IO[str]]:
    """:func:`atomic_binary` as a UTF-8 text stream (``newline`` as for :func:`open`)."""
    with atomic_binary(Path(path)) as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline=newline)
        try:
            yield text
            text.flush()
        finally:
            text.detach()  # the binary handle is closed (and the file replaced) by atomic_binary


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: temp file, fsync, ``os.replace``."""
    with atomic_binary(Path(path)) as handle:
        handle.write(text.encode("utf-8"))


def rewrite(path: Path, keep: Callable[[Line], bool]) -> int:
    """Rewrite ``path`` atomically with the non-blank lines for which ``keep(line)`` is true.

    Returns how many non-blank lines were left out.
    """
    dropped = 0
    with atomic_binary(path) as out:
        for line in lines(path):
            if line.blank:
                continue
            if not keep(line):
                dropped += 1
                continue
            out.write(line.raw if line.complete else line.raw + b"\n")
    return dropped
