"""Bounded concurrency over a lazy stream of work (memory stays flat in the number of items), and
running a coroutine from sync code, in a notebook too."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

__all__ = ["bounded", "run_sync"]

T = TypeVar("T")
R = TypeVar("R")


async def bounded(
    items: Iterable[T],
    worker: Callable[[T], Awaitable[R]],
    concurrency: int,
    on_start: Callable[[], None] | None = None,
) -> AsyncGenerator[R, None]:
    """Yield ``worker(item)`` results as they finish, with at most ``concurrency`` in flight.

    ``items`` is consumed lazily, one item per free slot. When the consumer stops early (an
    error, a cancellation, Ctrl-C), the work still in flight is cancelled.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    pending: set[asyncio.Future[R]] = set()
    try:
        for item in items:
            pending.add(asyncio.ensure_future(worker(item)))
            if on_start is not None:
                on_start()
            if len(pending) >= concurrency:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                yield task.result()
    finally:
        for task in pending:
            task.cancel()


def run_sync(factory: Callable[[], Any]) -> Any:
    """Run a coroutine from sync code, also inside a running loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
