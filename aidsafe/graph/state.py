"""The LangGraph state of one prompt going through a graph, and the run context its nodes get."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from ..models import ModelPool

__all__ = ["GraphContext", "PromptState", "initial_state"]


@dataclass(frozen=True)
class GraphContext:
    """What a run hands to every node (LangGraph's runtime context, ``graph.ainvoke(..., context=...)``).

    ``models`` answers each binding's calls: a file job passes a pool that answers from its
    response cache first. Without a context (a caller streaming the LangGraph object itself),
    nodes use the compiled graph's own pool.
    """

    models: ModelPool


def add_usage(left: dict[str, dict[str, int]] | None, right: dict[str, dict[str, int]] | None) -> dict[str, dict[str, int]]:
    """Sum token counts per stage (parallel agents write the same stage at once)."""
    out = {k: dict(v) for k, v in (left or {}).items()}
    for stage, counts in (right or {}).items():
        slot = out.setdefault(stage, {})
        for key, value in counts.items():
            slot[key] = slot.get(key, 0) + value
    return out


def collect_votes(left: list[dict[str, Any]] | None, right: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Gather the votes of one round; the vote node clears them by writing ``None``."""
    if right is None:
        return []
    return [*(left or []), *right]


def merge_data(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Later writes of a key replace earlier ones."""
    return {**(left or {}), **(right or {})}


class PromptState(TypedDict, total=False):
    """State of one prompt. Keys written by parallel agents have reducers."""

    id: str
    prompt: str
    intents: dict[str, list[str]]
    thoughts: list[dict[str, Any]]
    """All thoughts so far: the seed CoT plus every deliberation addition, each with its provenance
    (``by``, ``round``) and, once a reviewer replaced it, ``superseded``. The list only grows, so a
    thought's number never changes."""
    response: str
    seed: dict[str, Any] | None
    """The first draft (thoughts and response), kept for the record."""
    response_before_refiner: str | None
    refiner_rewrote_response: bool | None
    deliberation: Annotated[list[dict[str, Any]], operator.add]
    turns: int
    """Sequential loops: turns taken so far (round = turns // agents + 1)."""
    rounds: int
    stop_reason: str | None
    refined: list[dict[str, Any]] | None
    removed: list[dict[str, Any]]
    usage: Annotated[dict[str, dict[str, int]], add_usage]
    faults: Annotated[list[dict[str, Any]], operator.add]
    votes: Annotated[list[dict[str, Any]], collect_votes]
    error: dict[str, Any] | None
    data: Annotated[dict[str, Any], merge_data]
    """Values written by kinds beyond the recipe's (``ReplyKind.writes``), by key."""


def initial_state(prompt_id: str, prompt: str) -> PromptState:
    """The state a prompt enters the graph with."""
    return PromptState(
        id=prompt_id,
        prompt=prompt,
        intents={"explicit": [], "implicit": []},
        thoughts=[],
        response="",
        seed=None,
        response_before_refiner=None,
        deliberation=[],
        turns=0,
        rounds=0,
        stop_reason=None,
        refined=None,
        removed=[],
        usage={},
        faults=[],
        votes=[],
        error=None,
        data={},
    )
