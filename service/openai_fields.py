"""What chat and completions requests share beyond sampling: OpenAI fields that are
informational or refused, ``logit_bias``, ``response_format`` and vLLM's
``structured_outputs`` extra (turned into vLLM's ``StructuredOutputsParams``).

The rule (docs/api.md): a field is honoured, accepted as informational (it cannot change
the answer: ``user``, ``metadata``, ``store``...), or refused with a 400 whose ``param``
names it. Unknown fields are refused too (``extra="forbid"`` on the request models).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from service.errors import BadRequest

# OpenAI fields this server accepts without acting on them: none can change the answer.
INFORMATIONAL_CHAT = ("user", "metadata", "store", "safety_identifier", "prompt_cache_key",
                      "prompt_cache_retention", "prompt_cache_options", "service_tier")
# OpenAI fields refused unless null (or, for ``modalities``, ``["text"]``): each would change
# the answer and is not implemented. vLLM extras the server does not implement are refused
# as unknown fields.
REFUSED_CHAT = {
    "audio": "audio output is not supported",
    "modalities": "only the text modality is supported",
    "functions": "the deprecated `functions` is not supported; use `tools`",
    "function_call": "the deprecated `function_call` is not supported; use `tool_choice`",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "the models served are not reasoning models",
    "verbosity": "verbosity is not supported",
    "web_search_options": "web search is not supported",
    "moderation": "moderation is not supported",
}


def refused_value(field: str, value: Any) -> Any:
    """``value`` when it asks for nothing the server lacks, else a validation error whose
    location (so the 400's ``param``) is ``field``."""
    if value is None or (field == "modalities" and value == ["text"]):
        return value
    raise PydanticCustomError("unsupported", f"{REFUSED_CHAT[field]} (`{field}`)")


class StrictModel(BaseModel):
    """Unknown fields are a 400 naming them, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class JsonSchemaSpec(StrictModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = Field(
        None, description="Accepted; the schema is always enforced by constrained decoding.")


class ResponseFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StructuredOutputs(StrictModel):
    """vLLM's ``structured_outputs`` extra: exactly one of json/regex/choice/grammar/
    json_object. vLLM 0.32 reads its whitespace/additional-properties options per engine,
    not per request, so they are refused here as unknown fields (JSON is always compact)."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(None, min_length=1)
    grammar: str | None = None
    json_object: bool | None = None


LogitBias = dict[str, float]


def validate_logit_bias(value: LogitBias | None) -> LogitBias | None:
    """OpenAI's shape: token-id strings to a bias in [-100, 100]."""
    if value is None:
        return None
    for key, bias in value.items():
        if not key.strip().lstrip("-").isdigit():
            raise PydanticCustomError("logit_bias", f"logit_bias keys are token ids, not {key!r}")
        if not -100 <= bias <= 100:
            raise PydanticCustomError("logit_bias", "logit_bias values must be in [-100, 100]")
    return value


class LogitBiasField(BaseModel):
    """Mixin: the ``logit_bias`` field with OpenAI's validation."""

    logit_bias: LogitBias | None = Field(
        None, description="Token id (string) -> bias in [-100, 100], added to the logits.")

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: LogitBias | None) -> LogitBias | None:
        return validate_logit_bias(value)


def logit_bias_ids(value: LogitBias | None, vocab_size: int) -> dict[int, float] | None:
    """``logit_bias`` keyed by int token ids; 400 for ids outside the vocabulary."""
    if not value:
        return None
    bias = {int(k): float(v) for k, v in value.items()}
    bad = [k for k in bias if not 0 <= k < vocab_size]
    if bad:
        raise BadRequest(f"logit_bias token ids must be in [0, {vocab_size}); got {bad[:5]}",
                         param="logit_bias")
    return bias


def check_schema(schema: dict[str, Any], param: str) -> None:
    """400 for a schema that is not a JSON Schema (before the engine compiles it)."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise BadRequest(f"invalid JSON schema: {exc.message}", param=param) from None
    except Exception as exc:  # e.g. an unhashable "$schema"
        raise BadRequest(f"invalid JSON schema: {exc}", param=param) from None


def compiled(params, param: str):
    """``params`` (StructuredOutputsParams) once xgrammar, the engine's backend, compiles
    it: a 400 naming ``param`` now, not an error event after a stream has begun."""
    from types import SimpleNamespace

    from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

    try:
        validate_xgrammar_grammar(SimpleNamespace(structured_outputs=params))
    except Exception as exc:  # VLLMValidationError, ValueError
        raise BadRequest(str(exc), param=param) from None
    return params


def structured_outputs_params(response_format: ResponseFormat | None,
                              structured: StructuredOutputs | None):
    """vLLM ``StructuredOutputsParams`` for the request's constraint, or None."""
    from vllm.sampling_params import StructuredOutputsParams

    wants_format = response_format is not None and response_format.type != "text"
    if wants_format and structured is not None:
        raise BadRequest("use response_format or structured_outputs, not both",
                         param="structured_outputs")
    if wants_format:
        if response_format.type == "json_object":
            return StructuredOutputsParams(json_object=True)
        spec = response_format.json_schema
        if spec is None:
            raise BadRequest("response_format of type json_schema needs json_schema",
                             param="response_format.json_schema")
        param = "response_format.json_schema.schema"
        check_schema(spec.schema_, param)
        return compiled(StructuredOutputsParams(json=spec.schema_), param)
    if structured is None:
        return None
    fields = structured.model_dump(by_alias=True, exclude_none=True)
    if len(fields) != 1:
        raise BadRequest("structured_outputs needs exactly one of json, regex, choice, "
                         "grammar, json_object", param="structured_outputs")
    [(kind, value)] = fields.items()
    param = f"structured_outputs.{kind}"
    if isinstance(value, str) and not value.strip():
        raise BadRequest(f"{param} must not be empty", param=param)
    if kind == "json" and isinstance(value, dict):
        check_schema(value, param)
    try:
        params = StructuredOutputsParams(**fields)
    except ValueError as exc:  # vLLM's own checks (an empty choice list, ...)
        raise BadRequest(str(exc), param=param) from None
    return compiled(params, param)
