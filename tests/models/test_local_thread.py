"""The local backend calls llama.cpp for a model file from one thread only. llama.cpp's CPU backend
decodes on an OpenMP team kept per calling thread, and another thread's idle team spins on the
CPU: calls that took turns on asyncio's thread pool decoded 1.5x slower on 2 cores. (No model is
loaded here: the call itself is replaced.)"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aidsafe.models import ModelSettings, local
from aidsafe.models.base import Completion


def test_every_call_of_a_model_file_runs_on_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    seen: list[tuple[str, int]] = []

    def fake_complete(self: local.LocalChatModel, messages: list[dict[str, str]], schema: dict[str, Any]) -> Completion:
        time.sleep(0.01)  # long enough for calls to overlap on a thread pool
        seen.append((self.path.name, threading.get_ident()))
        return Completion(text="{}", prompt_tokens=1, completion_tokens=1, finish_reason="stop")

    monkeypatch.setattr(local.LocalChatModel, "_complete", fake_complete)
    models = [local.LocalChatModel(ModelSettings(backend="local", model=str(path))) for path in (gguf, gguf, other)]

    async def main() -> None:
        await asyncio.gather(*(m.complete([{"role": "user", "content": "hi"}], schema={}, schema_name="x") for m in models for _ in range(4)))

    asyncio.run(main())
    asyncio.run(main())  # a second event loop (the next job in the same process) uses the same thread
    by_file: dict[str, set[int]] = {}
    for name, ident in seen:
        by_file.setdefault(name, set()).add(ident)
    assert len(seen) == 24
    assert {name: len(idents) for name, idents in by_file.items()} == {"tiny.gguf": 1, "other.gguf": 1}
    assert by_file["tiny.gguf"] != by_file["other.gguf"]  # two model files may still run side by side
    assert threading.main_thread().ident not in by_file["tiny.gguf"]
