"""One live run per output: an exclusive ``fcntl.flock`` on ``OUT.lock``.

The operating system releases a flock when its process dies, so a lock file left by a killed run
never blocks the next one. The holder removes the file when it finishes; a run that opened the
file just before it was removed notices (the path no longer names the file it locked) and opens
it afresh. Where ``fcntl`` does not exist (Windows), outputs are not locked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType

from typing_extensions import Self

from ..errors import OutputInUseError
from ._lines import PathLike

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]  # no locking where the platform has none

__all__ = ["OutputLock", "lock_path"]


def lock_path(output: PathLike) -> Path:
    """``out.jsonl`` -> ``out.jsonl.lock``."""
    return Path(os.fspath(output) + ".lock")


class OutputLock:
    """Hold the lock of an output for the length of a ``with`` block; refuse at once if another run holds it."""

    def __init__(self, output: PathLike) -> None:
        self.output = Path(output)
        self.path = lock_path(output)
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip()
                os.close(fd)
                pid = f" (pid {holder})" if holder.isdigit() else ""
                raise OutputInUseError(
                    f"{self.output} is being written by another aidsafe run{pid}; "
                    "wait for it to finish, or write to another output"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file after we opened it: try again
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # while still holding the lock, so no one can lock a file about to vanish
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
