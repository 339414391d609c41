"""The judge's reply kinds, registered like the recipe's: ``scores`` and ``pairwise``.

Both are partial kinds (``ReplyKind.partial``): every field may be left empty. The call insists
only on a JSON object (one repair call when there is none), and each field is then kept when it
is valid, else None, so that a reply with one bad score keeps the others and the bad one is left
unscored (fail closed), never given a default. A score is an integer 1-5 taken as written: a
string, a float or a boolean is not one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from ..kinds import FakeRequest, ReplyKind, register_kind
from .schema import METRICS

__all__ = ["PAIRWISE", "SCORES", "PairwiseReply", "ScoresReply"]


RATIONALE_CHARS = 1000

_SCORE_FIELDS: dict[str, Any] = {
    "rationale": (str, Field(min_length=1)),  # the schema asks for at most RATIONALE_CHARS; a longer one is kept whole
    "applicable_policies": (list[str], ...),
    **{m: (int, Field(strict=True, ge=1, le=5)) for m in METRICS},
}


class _Lenient(BaseModel):
    """What an unconstrained server's reply may carry beyond the schema and is still worth keeping:
    a rationale longer than asked for, and the policy ids of a list that also holds other values."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("applicable_policies", mode="before", check_fields=False)
    @classmethod
    def _ids_only(cls, value: Any) -> Any:
        return [item for item in value if isinstance(item, str)] if isinstance(value, list) else value


ScoresReply: type[BaseModel] = create_model(
    "ScoresReply",
    __base__=_Lenient,
    __doc__="The grader's reply: its reasoning first, then the policies the prompt calls for and a 1-5 score per metric.",
    **_SCORE_FIELDS,
)


def _scores_schema(schema: dict[str, Any], policy_ids: list[str], context: Mapping[str, Any]) -> dict[str, Any]:
    """The rationale first; applicable policies limited to the pack; every score one of 1..5."""
    props: dict[str, Any] = {
        "rationale": {"type": "string", "minLength": 1, "maxLength": RATIONALE_CHARS},
        "applicable_policies": {"type": "array", "items": {"type": "string", "enum": policy_ids}, "maxItems": len(policy_ids)},
    }
    props.update({m: {"type": "integer", "enum": [1, 2, 3, 4, 5]} for m in METRICS})
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _fake_scores(req: FakeRequest) -> dict[str, Any]:
    props = req.schema.get("properties", {})
    ids = props.get("applicable_policies", {}).get("items", {}).get("enum", [req.policy_id])
    scores = {m: 1 + (req.n >> i) % 5 for i, m in enumerate(k for k in props if k not in ("rationale", "applicable_policies"))}
    return {"rationale": "The chain of thought is judged metric by metric.", "applicable_policies": ids[:1], **scores}


SCORES = register_kind(
    ReplyKind(
        name="scores",
        model=ScoresReply,
        inputs=frozenset({"intents", "thoughts", "response"}),
        schema=_scores_schema,
        partial=frozenset(_SCORE_FIELDS),
        max_tokens=1536,
        fake=_fake_scores,
        description="the auto-grader's six 1-5 scores of one record",
    )
)


class PairwiseReply(BaseModel):
    """The grader's verdict on two chains of thought for the same prompt."""

    model_config = ConfigDict(extra="forbid")

    rationale: str = Field(min_length=1, max_length=RATIONALE_CHARS)
    """The comparison, written before the verdict."""
    winner: Literal["first", "second", "tie"]


PAIRWISE = register_kind(
    ReplyKind(
        name="pairwise",
        model=PairwiseReply,
        inputs=frozenset({"first", "second"}),
        partial=frozenset({"rationale", "winner"}),
        max_tokens=1024,
        fake=lambda req: {"rationale": "Both chains are compared policy by policy.", "winner": ("first", "second", "tie")[req.n % 3]},
        description="which of two chains of thought is more faithful to the policies",
    )
)
