"""The request of ``POST /v1/responses``: what is honoured, what is informational, and
(``extra="forbid"``) a 400 naming any other field.

Honoured: ``model``, ``input`` (a string or messages whose content is a string or text
parts), ``instructions``, ``max_output_tokens``, ``temperature``, ``top_p``, ``stream``,
and ``text.format`` of type ``text`` (the default). Informational (stored nowhere, they
do not change the answer): ``metadata``, ``user``, ``store``, ``safety_identifier``,
``prompt_cache_key``, ``service_tier``. Tools, reasoning, conversations,
``previous_response_id`` and the rest are refused by name: this server keeps no response
state and the base is a small pretrained model.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    # ``output_text`` parts come back when a client sends a previous answer as input.
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list | None = None


class InputMessage(_Strict):
    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextPart]
    # Present when a client echoes an output message back as input.
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class TextFormat(_Strict):
    type: Literal["text"]


class TextConfig(_Strict):
    format: TextFormat | None = None


class ResponseCreateRequest(_Strict):
    model: str
    input: str | Annotated[list[InputMessage], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    text: TextConfig | None = None
    # Informational only (documented in docs/api.md).
    metadata: dict[str, str] | None = None
    user: str | None = None
    store: bool | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
