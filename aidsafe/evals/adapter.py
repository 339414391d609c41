"""An inspect_ai model seen as a :class:`~aidsafe.models.base.ChatModel`, so that the evaluation
graders ask for their grade through :func:`aidsafe.structured.call_structured`, as the graph and
the judge ask for theirs (one extractor, one validation, one repair, the raw reply kept).

Thin on purpose: messages in (system, user and assistant turns become inspect's chat messages),
text and token usage out (a reply stopped at the token limit reads as ``finish_reason="length"``).
The schema travels as the grader's ``structured`` mode says: OpenAI's ``json_schema`` or
llama-cpp-python's ``json_object`` + schema in ``response_format`` through
``GenerateConfig(extra_body=...)``, or not at all (``none``: the JSON is taken out of a free
reply). Decoding is greedy. What inspect raises (a provider error, after inspect's own retries)
is not caught: the sample errors as it would without aidsafe.
"""

from __future__ import annotations

from typing import Any, Literal

from inspect_ai.model import ChatMessage, ChatMessageAssistant, ChatMessageSystem, ChatMessageUser, GenerateConfig, Model

from ..models.base import ChatModel, Completion, ModelSettings
from ..models.openai import response_format

__all__ = ["STRUCTURED", "GraderStructured", "InspectChatModel"]

GraderStructured = Literal["none", "json_schema", "json_object"]
STRUCTURED: tuple[GraderStructured, ...] = ("none", "json_schema", "json_object")
"""How a grader's reply schema is sent: not at all (parse the reply's JSON), OpenAI's ``json_schema``
(OpenAI, vLLM), or ``json_object`` with a ``schema`` key (llama-cpp-python's server)."""

_CUT = ("max_tokens", "model_length")
"""inspect's stop reasons for a reply cut at the token limit (``length`` in OpenAI's words)."""


def chat_messages(messages: list[dict[str, str]]) -> list[ChatMessage]:
    """``{"role", "content"}`` messages as inspect's chat messages."""
    return [
        ChatMessageSystem(content=m["content"]) if m["role"] == "system" else
        ChatMessageAssistant(content=m["content"]) if m["role"] == "assistant" else ChatMessageUser(content=m["content"])
        for m in messages
    ]


class InspectChatModel(ChatModel):
    """``model`` (an inspect model, e.g. the ``grader`` role) answering as a chat model does."""

    def __init__(self, model: Model, *, structured: GraderStructured = "none", max_tokens: int | None = None) -> None:
        super().__init__(ModelSettings(backend="inspect", model=str(model), temperature=0.0, max_tokens=max_tokens))
        self.model = model
        self.structured = structured

    def config(self, schema: dict[str, Any], schema_name: str) -> GenerateConfig:
        """Greedy decoding within the token budget; the schema in ``response_format`` unless ``none``."""
        if self.structured == "none":
            return GenerateConfig(temperature=0.0, max_tokens=self.settings.max_tokens)
        return GenerateConfig(temperature=0.0, max_tokens=self.settings.max_tokens,
                              extra_body={"response_format": response_format(self.structured, schema, schema_name)})

    async def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any], schema_name: str, **options: Any) -> Completion:
        """One ``generate`` call; ``options`` (log-probabilities) are not asked of inspect."""
        output = await self.model.generate(chat_messages(messages), config=self.config(schema, schema_name))
        usage = output.usage
        stop = output.stop_reason if output.choices else None
        return Completion(
            text=output.completion,
            prompt_tokens=usage.input_tokens if usage else 0,
            completion_tokens=usage.output_tokens if usage else 0,
            finish_reason="length" if stop in _CUT else stop,
        )

    @property
    def label(self) -> str:
        """The inspect model's own name (``openai-api/stub/grader``), as the scores record it."""
        return str(self.model)
