"""prefix: the share of each role's rendered prompt that is common to every prompt of a set.

A long common prefix is what a server's prefix cache can reuse. Counted in whitespace-split words
(a stand-in for tokens) and in characters. Target: >= 50% for intent and initializer.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import ROLES, make_pipeline, make_prompts, median
from bench.report import Row

__all__ = ["measure", "prefix_shares", "rows"]


def _common_prefix_len(seqs: list[Any]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        x = first[i]
        if any(s[i] != x for s in seqs):
            return i
    return n


def prefix_shares(pipe: Any, prompts: list[str], roles: tuple[str, ...] = ROLES) -> dict[str, dict[str, float]]:
    """For each role: the share of its rendered prompt that is common to all ``prompts``.

    A prompt's text is its messages' contents in order (system, then user), joined by newlines;
    the common prefix is the longest start shared by every prompt of the set. Shares are given in
    characters and in whitespace-split words (a stand-in for tokens), median over the prompts.
    """
    out = {}
    for role in roles:
        texts = ["\n".join(m["content"] for m in pipe.messages(role, p)) for p in prompts]
        words = [t.split() for t in texts]
        c_chars = _common_prefix_len(texts)
        c_words = _common_prefix_len(words)
        out[role] = {
            "common_prefix_chars": c_chars,
            "common_prefix_words": c_words,
            "median_prompt_chars": median([len(t) for t in texts]),
            "median_prompt_words": median([len(w) for w in words]),
            "share_chars": median([c_chars / len(t) for t in texts]),
            "share_words": median([c_words / len(w) for w in words]),
            "min_share_words": min(c_words / len(w) for w in words),
        }
    return out


def measure(args: argparse.Namespace, tmp: Path, shared: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark (``--prefix-prompts``; ``--repeats``, though it is deterministic)."""
    pipe = make_pipeline()
    prompts = make_prompts(args.prefix_prompts, seed=6)
    runs = []
    for _ in range(args.repeats):  # deterministic; repeated only for uniformity
        runs.append(prefix_shares(pipe, prompts))
    shares = runs[-1]
    ok = all(shares[r]["share_words"] >= 0.5 for r in ("intent", "initializer"))
    return {
        "params": {"prompts": len(prompts), "unit": "whitespace-split words (characters too)"},
        "median": {f"{r}_share_words": shares[r]["share_words"] for r in ROLES}
        | {f"{r}_share_chars": shares[r]["share_chars"] for r in ROLES},
        "detail": shares,
        "target": {"intent_share_words": ">= 0.5", "initializer_share_words": ">= 0.5"},
        "met": ok,
    }


def rows(result: dict[str, Any]) -> list[Row]:
    """The table rows of a ``measure`` result."""
    d = result["detail"]
    tag = f"prefix ({result['params']['prompts']} prompts)"
    out = []
    for role in ROLES:
        target = ">= 50%" if role in ("intent", "initializer") else ""
        met = d[role]["share_words"] >= 0.5 if target else None
        out.append(Row(tag, f"{role}: common prefix share, words (chars)",
                       f"{100 * d[role]['share_words']:.1f}% ({100 * d[role]['share_chars']:.1f}%)", target, met))
    return out
