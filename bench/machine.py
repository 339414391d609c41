"""The machine a run is made on: its description, and how busy other processes kept its CPU."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import time
from pathlib import Path
from typing import Any

__all__ = ["ForeignCPU", "machine"]


class ForeignCPU:
    """CPU used by processes other than this one and its children (servers, memory runs), as a share
    of the machine, from /proc/stat: a busy machine makes timings unreliable (Linux only)."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # all but idle and iowait
        t = os.times()
        return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic()

    def share(self) -> float | None:
        """The share since construction; None where /proc/stat is missing or under 5 s passed."""
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, ours, wall = (e - s for e, s in zip(end, self.start))
        if wall < 5:  # /proc/stat and os.times() tick at 10 ms: too coarse for a short benchmark
            return None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return round(max(0.0, busy - ours) / (wall * cores), 3) if wall > 0 else None


def machine() -> dict[str, Any]:
    """Date, cores, CPU model, Python, platform and the versions of the packages that matter."""

    def ver(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {p: ver(p) for p in ("aidsafe", "langgraph", "langchain-openai", "openai", "httpx", "pydantic")},
    }
