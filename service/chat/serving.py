"""Chat completions: messages → the base model's chat template (training.chat_format) →
engine, through the base or an adapter; streamed or not."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from service.chat.protocol import ChatCompletionRequest
from service.errors import BadRequest
from service.generation import Generator
from service.ids import new_id
from service.logprobs import chat_logprobs
from training.chat_format import encode_prompt


class ChatServing:
    """The logic behind ``POST /v1/chat/completions`` (testable without HTTP)."""

    def __init__(self, generator: Generator, tokenizer: Any) -> None:
        self.gen = generator
        self.tokenizer = tokenizer
        # The model's turn ends at <end_of_turn>, whatever the checkpoint's generation_config
        # lists as EOS (the training side teaches the model to emit it).
        eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
        self.stop_token_ids = [eot] if isinstance(eot, int) and eot != tokenizer.unk_token_id else None

    def _prompt_ids(self, request: ChatCompletionRequest) -> list[int]:
        try:
            messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                        for m in request.messages]
            return encode_prompt(self.tokenizer, messages)
        except ValueError as exc:
            raise BadRequest(str(exc), param="messages") from None
        except Exception as exc:  # jinja2 TemplateError: e.g. roles that do not alternate
            raise BadRequest(f"messages cannot be formatted: {exc}", param="messages") from None

    def _params(self, request: ChatCompletionRequest, prompt_len: int):
        if request.top_logprobs is not None and not request.logprobs:
            raise BadRequest("top_logprobs requires logprobs=true", param="top_logprobs")
        max_tokens = request.max_completion_tokens or request.max_tokens
        return self.gen.sampling_params(
            prompt_len,
            max_tokens,
            param_name="max_completion_tokens" if request.max_completion_tokens else "max_tokens",
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            stop=request.stop,
            seed=request.seed,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            min_tokens=request.min_tokens,
            ignore_eos=request.ignore_eos,
            stop_token_ids=None if request.ignore_eos else self.stop_token_ids,
            logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        )

    async def create(self, request: ChatCompletionRequest) -> dict[str, Any] | AsyncIterator[dict]:
        """A response dict, or (``stream=true``) an iterator of chunk dicts.

        Raises ServiceError subclasses (404 unknown model, 400 bad input, 429 overload)
        before anything is streamed.
        """
        adapter = self.gen.resolve(request.model)
        prompt_ids = self._prompt_ids(request)
        params = self._params(request, len(prompt_ids))
        request_id = new_id("chatcmpl")
        admission = self.gen.admitted(request.model)
        await admission.__aenter__()
        stream = self.gen.stream(request.model, prompt_ids, params, adapter, request_id)
        if request.stream:
            return self._chunks(request, request_id, prompt_ids, stream, admission)
        try:
            return await self._collect(request, request_id, prompt_ids, stream)
        finally:
            await stream.aclose()
            await admission.__aexit__(None, None, None)

    async def _collect(self, request, request_id, prompt_ids, stream) -> dict[str, Any]:
        n = request.n
        texts, tokens = [""] * n, [[] for _ in range(n)]
        steps: list[list] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        async for output in stream:
            for out in output.outputs:
                texts[out.index] += out.text
                tokens[out.index].extend(out.token_ids)
                if out.logprobs:
                    steps[out.index].extend(out.logprobs)
                if out.finish_reason:
                    finish[out.index] = out.finish_reason
        choices = []
        for i in range(n):
            logprobs = None
            if request.logprobs:
                logprobs = {"content": chat_logprobs(
                    tokens[i], steps[i], request.top_logprobs or 0, self.tokenizer)}
            choices.append({
                "index": i,
                "message": {"role": "assistant", "content": texts[i]},
                "logprobs": logprobs,
                "finish_reason": finish[i],
                **({"token_ids": tokens[i]} if request.return_token_ids else {}),
            })
        completion_tokens = sum(len(t) for t in tokens)
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": choices,
            **({"prompt_token_ids": prompt_ids} if request.return_token_ids else {}),
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": completion_tokens,
                "total_tokens": len(prompt_ids) + completion_tokens,
            },
        }

    async def _chunks(self, request, request_id, prompt_ids, stream, admission):
        created = int(time.time())
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        usage_field = {"usage": None} if include_usage else {}

        def chunk(choices: list[dict]) -> dict:
            return {"id": request_id, "object": "chat.completion.chunk", "created": created,
                    "model": request.model, "choices": choices, **usage_field}

        completion_tokens = 0
        try:
            # The first chunk of each choice carries the role, as OpenAI's do.
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                          "logprobs": None, "finish_reason": None} for i in range(request.n)])
            async for output in stream:
                choices = []
                for out in output.outputs:
                    completion_tokens += len(out.token_ids)
                    if not out.text and not out.finish_reason and not out.token_ids:
                        continue
                    logprobs = None
                    if request.logprobs and out.logprobs:
                        logprobs = {"content": chat_logprobs(
                            list(out.token_ids), out.logprobs, request.top_logprobs or 0,
                            self.tokenizer)}
                    choices.append({
                        "index": out.index,
                        "delta": {"content": out.text} if out.text else {},
                        "logprobs": logprobs,
                        "finish_reason": out.finish_reason,
                    })
                if choices:
                    yield chunk(choices)
            if include_usage:
                yield {"id": request_id, "object": "chat.completion.chunk", "created": created,
                       "model": request.model, "choices": [],
                       "usage": {"prompt_tokens": len(prompt_ids),
                                 "completion_tokens": completion_tokens,
                                 "total_tokens": len(prompt_ids) + completion_tokens}}
        finally:
            await stream.aclose()
            await admission.__aexit__(None, None, None)
