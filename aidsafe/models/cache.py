"""A response cache keyed on the request, so a resumed run never pays twice for a model call.

:class:`CachedChatModel` wraps any chat model with a :class:`ResponseCache`: a request answered
before is answered from the cache, and every new reply is stored as it arrives.

Why a request cache rather than LangGraph checkpoints: a prompt killed mid-deliberation is
resumed by running its graph again from the start, and every call it already made is answered
from the cache (the same messages give the same key), so only the missing calls reach the
model. This needs no per-prompt thread ids or checkpoint tables, survives edits of unrelated
graph nodes, and also answers identical requests across prompts (the way Curator fingerprints
requests). The cache is a SQLite file in WAL mode next to the output; each reply is committed
as it arrives, so a ``kill -9`` loses at most the calls that were in flight.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from .base import ChatModel, Completion, ModelSettings

__all__ = ["CachedChatModel", "ResponseCache", "request_key"]


def request_key(settings: ModelSettings, messages: list[dict[str, str]], schema: dict[str, Any], **options: Any) -> str:
    """Fingerprint of everything that determines a reply (never the endpoint URL or the key)."""
    payload: dict[str, Any] = {
        "model": settings.label(),
        "messages": messages,
        "schema": schema,
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
        "seed": settings.seed,
        "structured": settings.structured,
    }
    if options:  # e.g. logprobs; requests without options keep the keys they always had
        payload["options"] = options
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    """SQLite-backed map from request key to reply."""

    def __init__(self, path: str | Path, *, read: bool = True) -> None:
        self.path = Path(path)
        self.read = read
        """When False the cache only records (used by ``--retry-failed``: failed prompts are asked afresh)."""
        self.hits = 0
        self.misses = 0
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, text TEXT NOT NULL, prompt_tokens INTEGER, "
            "completion_tokens INTEGER, finish_reason TEXT)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(replies)")}
        if "logprobs" not in columns:  # a cache written before log-probabilities were kept
            self._db.execute("ALTER TABLE replies ADD COLUMN logprobs TEXT")

    def get(self, key: str) -> Completion | None:
        if not self.read:
            self.misses += 1
            return None
        row = self._db.execute(
            "SELECT text, prompt_tokens, completion_tokens, finish_reason, logprobs FROM replies WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        logprobs = json.loads(row[4]) if row[4] else None
        return Completion(text=row[0], prompt_tokens=row[1], completion_tokens=row[2], finish_reason=row[3], cached=True, logprobs=logprobs)

    def put(self, key: str, completion: Completion) -> None:
        logprobs = json.dumps(completion.logprobs) if completion.logprobs is not None else None
        self._db.execute(
            "INSERT OR REPLACE INTO replies (key, text, prompt_tokens, completion_tokens, finish_reason, logprobs) VALUES (?, ?, ?, ?, ?, ?)",
            (key, completion.text, completion.prompt_tokens, completion.completion_tokens, completion.finish_reason, logprobs),
        )

    def count(self) -> int:
        """Replies stored."""
        return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class CachedChatModel(ChatModel):
    """A chat model that answers from a :class:`ResponseCache` when it can, else asks ``inner``."""

    def __init__(self, inner: ChatModel, cache: ResponseCache) -> None:
        self.inner = inner
        self.cache = cache
        self.settings = inner.settings

    async def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any], schema_name: str, **options: Any) -> Completion:
        key = request_key(self.settings, messages, schema, **options)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        completion = await self.inner.complete(messages, schema=schema, schema_name=schema_name, **options)
        self.cache.put(key, completion)
        return completion

    async def aclose(self) -> None:
        """The wrapped model belongs to its pool, which closes it."""
