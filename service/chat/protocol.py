"""Request and response shapes of ``POST /v1/chat/completions`` (OpenAI names).

Every OpenAI field is honoured, informational or refused by name (service/openai_fields.py,
docs/api.md); unknown fields are refused."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.openai_fields import (
    REFUSED_CHAT,
    LogitBiasField,
    ResponseFormat,
    StrictModel,
    StructuredOutputs,
    refused_value,
)


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class FunctionCall(StrictModel):
    name: str
    arguments: str


class ToolCall(StrictModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, description="Informational: not rendered into the prompt.")
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # What the SDK echoes back when a response message is appended to the conversation:
    # accepted only empty.
    refusal: None = None
    audio: None = None
    function_call: None = None
    annotations: list[Any] | None = Field(None, max_length=0)

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("tool messages need tool_call_id")
        return self

    def text(self) -> str:
        """The message text; only text parts are supported."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"content parts of type {part.type!r} are not supported")
            parts.append(part.text)
        return "".join(parts)


class StreamOptions(StrictModel):
    include_usage: bool = False
    include_obfuscation: bool | None = Field(
        None, description="Informational: chunks carry no obfuscation padding.")


class FunctionDefinition(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = Field(
        None, description="Accepted; required and named tool calls are always constrained.")


class Tool(StrictModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(StrictModel):
    name: str


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(LogitBiasField, StrictModel):
    """OpenAI fields, plus vLLM's ``top_k``, ``min_tokens``, ``ignore_eos``,
    ``structured_outputs`` and ``return_token_ids`` extras."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # torch seeds are int64
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = Field(
        None, description="Accepted: the server generates at most one tool call per turn, "
                          "which both values allow.")
    # Informational (cannot change the answer; docs/api.md).
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    service_tier: str | None = None
    # Refused unless null (each names itself in the 400).
    audio: Any = Field(None, description="Not supported: refused unless null.")
    modalities: Any = Field(None, description='Only ["text"] (or null) is accepted.')
    functions: Any = Field(None, description="Not supported (use tools): refused unless null.")
    function_call: Any = Field(None, description="Not supported (use tool_choice).")
    prediction: Any = Field(None, description="Not supported: refused unless null.")
    reasoning_effort: Any = Field(None, description="Not supported: refused unless null.")
    verbosity: Any = Field(None, description="Not supported: refused unless null.")
    web_search_options: Any = Field(None, description="Not supported: refused unless null.")
    moderation: Any = Field(None, description="Not supported: refused unless null.")
    # vLLM extras.
    top_k: int | None = None
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None
    structured_outputs: StructuredOutputs | None = Field(
        None, description="vLLM extra: one of json, regex, choice, grammar, json_object.")
    return_token_ids: bool = Field(
        False, description="vLLM extra: add prompt_token_ids and choices[].token_ids."
    )

    @field_validator(*REFUSED_CHAT, mode="before")
    @classmethod
    def _refused(cls, value: Any, info) -> Any:
        return refused_value(info.field_name, value)


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
