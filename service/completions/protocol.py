"""Request and response shapes of ``POST /v1/completions`` (OpenAI legacy names).

Every OpenAI field is honoured, informational or refused by name (docs/api.md); unknown
fields are refused."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from service.chat.protocol import StreamOptions, Usage
from service.openai_fields import LogitBiasField, ResponseFormat, StrictModel, StructuredOutputs


class CompletionRequest(LogitBiasField, StrictModel):
    """OpenAI fields, plus vLLM's ``prompt_logprobs``, ``top_k``, ``min_tokens``,
    ``ignore_eos``, ``response_format``, ``structured_outputs`` and ``return_token_ids``
    extras. ``echo`` with ``logprobs`` and ``max_tokens=0`` scores a prompt."""

    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    n: int = Field(1, ge=1, le=16)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # torch seeds are int64
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    suffix: str | None = Field(None, description="Refused unless empty (no infilling).")
    best_of: int | None = Field(None, ge=1, description="Only equal to n is accepted.")
    user: str | None = Field(None, description="Informational.")
    prompt_logprobs: int | None = Field(None, ge=0, le=20)
    top_k: int | None = None
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None
    response_format: ResponseFormat | None = Field(
        None, description="vLLM extra: json_object or json_schema, as in chat.")
    structured_outputs: StructuredOutputs | None = Field(
        None, description="vLLM extra: one of json, regex, choice, grammar, json_object.")
    return_token_ids: bool = Field(
        False, description="vLLM extra: add choices[].prompt_token_ids and .token_ids."
    )


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None
    prompt_logprobs: list[dict[str, Any] | None] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
