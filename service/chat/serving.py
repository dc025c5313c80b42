"""Chat completions: messages (and tools, training.tool_format) → the base model's chat
template (training.chat_format) → engine, through the base or an adapter; streamed or not.
``logit_bias``, ``response_format``/``structured_outputs`` and forced tool calls go to vLLM's
SamplingParams (structured outputs: vLLM's own backends, xgrammar on CPU)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from service.chat.protocol import ChatCompletionRequest
from service.errors import BadRequest
from service.generation import Generator
from service.ids import new_id
from service.logprobs import chat_logprobs
from service.openai_fields import compiled, logit_bias_ids, structured_outputs_params
from service.tools import StreamedReply, ToolPlan, plan, reply
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
            messages = []
            for m in request.messages:
                message = {"role": "system" if m.role == "developer" else m.role,
                           "content": m.text()}
                if m.tool_calls:
                    message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
                if m.tool_call_id is not None:
                    message["tool_call_id"] = m.tool_call_id
                messages.append(message)
            tools = [t.model_dump(exclude_none=True) for t in request.tools or []]
            return encode_prompt(self.tokenizer, messages, tools or None)
        except ValueError as exc:
            raise BadRequest(str(exc), param="messages") from None
        except Exception as exc:  # jinja2 TemplateError: e.g. roles that do not alternate
            raise BadRequest(f"messages cannot be formatted: {exc}", param="messages") from None

    def _params(self, request: ChatCompletionRequest, prompt_len: int, tool_plan: ToolPlan):
        if request.top_logprobs is not None and not request.logprobs:
            raise BadRequest("top_logprobs requires logprobs=true", param="top_logprobs")
        structured = structured_outputs_params(request.response_format,
                                               request.structured_outputs)
        if tool_plan.schema is not None:
            if structured is not None:
                raise BadRequest("a required or named tool_choice cannot be combined with "
                                 "response_format or structured_outputs", param="tool_choice")
            from vllm.sampling_params import StructuredOutputsParams

            structured = compiled(StructuredOutputsParams(json=tool_plan.schema), "tools")
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
            logit_bias=logit_bias_ids(request.logit_bias, len(self.tokenizer)),
            structured_outputs=structured,
        )

    async def create(
        self, request: ChatCompletionRequest, *, priority: int = 0
    ) -> dict[str, Any] | AsyncIterator[dict]:
        """A response dict, or (``stream=true``) an iterator of chunk dicts.

        Raises ServiceError subclasses (404 unknown model, 400 bad input, 429 overload)
        before anything is streamed.
        """
        adapter = self.gen.resolve(request.model)
        tool_plan = plan(request.tools, request.tool_choice)
        prompt_ids = self._prompt_ids(request)
        params = self._params(request, len(prompt_ids), tool_plan)
        self.gen.check_supported(adapter, params)
        request_id = new_id("chatcmpl")
        admission = self.gen.admitted(request.model, request.n)
        await admission.__aenter__()
        stream = self.gen.stream(request.model, prompt_ids, params, adapter, request_id, priority)
        if request.stream:
            return self._chunks(request, request_id, prompt_ids, stream, admission, tool_plan)
        try:
            return await self._collect(request, request_id, prompt_ids, stream, tool_plan)
        finally:
            await stream.aclose()
            await admission.__aexit__(None, None, None)

    async def _collect(self, request, request_id, prompt_ids, stream, tool_plan
                       ) -> dict[str, Any]:
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
            message, finish_reason = reply(texts[i], finish[i], tool_plan)
            choices.append({
                "index": i,
                "message": {"role": "assistant", **message},
                "logprobs": logprobs,
                "finish_reason": finish_reason,
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

    async def _chunks(self, request, request_id, prompt_ids, stream, admission, tool_plan):
        created = int(time.time())
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        usage_field = {"usage": None} if include_usage else {}

        def chunk(choices: list[dict]) -> dict:
            return {"id": request_id, "object": "chat.completion.chunk", "created": created,
                    "model": request.model, "choices": choices, **usage_field}

        completion_tokens = 0
        replies = [StreamedReply(tool_plan) for _ in range(request.n)]
        try:
            # The first chunk of each choice carries the role, as OpenAI's do.
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                          "logprobs": None, "finish_reason": None} for i in range(request.n)])
            async for output in stream:
                choices, tails = [], []
                for out in output.outputs:
                    completion_tokens += len(out.token_ids)
                    if not out.text and not out.finish_reason and not out.token_ids:
                        continue
                    logprobs = None
                    if request.logprobs and out.logprobs:
                        logprobs = {"content": chat_logprobs(
                            list(out.token_ids), out.logprobs, request.top_logprobs or 0,
                            self.tokenizer)}
                    text = replies[out.index].feed(out.text)
                    finish_reason, ends = out.finish_reason, []
                    if finish_reason:
                        ends, finish_reason = replies[out.index].finish(finish_reason)
                    if ends:
                        # A held reply (a tool call) ends with its own deltas, one chunk
                        # each; the last carries the finish reason.
                        if logprobs:
                            choices.append({"index": out.index, "delta": {},
                                            "logprobs": logprobs, "finish_reason": None})
                        tails += [(out.index, delta, None) for delta in ends[:-1]]
                        tails.append((out.index, ends[-1], finish_reason))
                        continue
                    if not text and not finish_reason and not logprobs:
                        continue  # held back: it may be a tool call
                    choices.append({
                        "index": out.index,
                        "delta": {"content": text} if text else {},
                        "logprobs": logprobs,
                        "finish_reason": finish_reason,
                    })
                if choices:
                    yield chunk(choices)
                for index, delta, finish_reason in tails:
                    yield chunk([{"index": index, "delta": delta, "logprobs": None,
                                  "finish_reason": finish_reason}])
            if include_usage:
                yield {"id": request_id, "object": "chat.completion.chunk", "created": created,
                       "model": request.model, "choices": [],
                       "usage": {"prompt_tokens": len(prompt_ids),
                                 "completion_tokens": completion_tokens,
                                 "total_tokens": len(prompt_ids) + completion_tokens}}
        finally:
            await stream.aclose()
            await admission.__aexit__(None, None, None)
