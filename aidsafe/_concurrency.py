"""Bounded concurrency over a lazy stream of work: memory stays flat in the number of items."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

__all__ = ["bounded"]

T = TypeVar("T")
R = TypeVar("R")


async def bounded(
    items: Iterable[T],
    worker: Callable[[T], Awaitable[R]],
    concurrency: int,
    on_start: Callable[[], None] | None = None,
) -> AsyncIterator[R]:
    """Yield ``worker(item)`` results as they finish, with at most ``concurrency`` in flight.

    ``items`` is consumed lazily, one item per free slot.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    pending: set[asyncio.Task[R]] = set()
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
