"""Legacy text completions: raw prompt(s) → engine, base or adapter. Supports ``echo`` with
``logprobs`` (and ``max_tokens=0``) to score a prompt, plus vLLM's ``prompt_logprobs``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from service.completions.protocol import CompletionRequest
from service.errors import BadRequest
from service.generation import Generator
from service.ids import new_id
from service.logprobs import completion_logprobs
from service.openai_fields import logit_bias_ids, structured_outputs_params


@dataclass
class _Choice:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    steps: list[Any] = field(default_factory=list)
    finish_reason: str | None = None


def _prompt_logprobs_json(token_ids: list[int], steps: list[Any] | None) -> list[dict] | None:
    """vLLM's ``prompt_logprobs`` shape: per prompt token, {token_id: {logprob, rank,
    decoded_token}} (None for the first token)."""
    if steps is None:
        return None
    result: list[dict | None] = []
    for step in steps:
        if step is None:
            result.append(None)
            continue
        result.append({
            str(tid): {"logprob": float(lp.logprob), "rank": lp.rank,
                       "decoded_token": lp.decoded_token}
            for tid, lp in step.items()
        })
    return result


class CompletionServing:
    """The logic behind ``POST /v1/completions`` (testable without HTTP)."""

    def __init__(self, generator: Generator, tokenizer: Any) -> None:
        self.gen = generator
        self.tokenizer = tokenizer

    def _prompts(self, request: CompletionRequest) -> list[tuple[str, list[int]]]:
        prompt = request.prompt
        if isinstance(prompt, str):
            items: list[Any] = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            items = [prompt]
        else:
            items = list(prompt)
        if not items:
            raise BadRequest("prompt must not be empty", param="prompt")
        vocab = len(self.tokenizer)
        prompts = []
        for item in items:
            if isinstance(item, str):
                # Like vLLM and OpenAI: the tokenizer's special tokens (<bos>) are added.
                ids = self.tokenizer(item)["input_ids"]
                prompts.append((item, ids))
            else:
                ids = list(item)
                if not ids or any(not 0 <= t < vocab for t in ids):
                    raise BadRequest(f"token ids must be in [0, {vocab})", param="prompt")
                prompts.append((self.tokenizer.decode(ids), ids))
        return prompts

    def _params(self, request: CompletionRequest, prompt_len: int):
        prompt_logprobs = request.prompt_logprobs
        if request.echo and request.logprobs is not None:
            prompt_logprobs = max(request.logprobs, prompt_logprobs or 0)
        # max_tokens=0 (score the prompt only) still needs one engine step; its token is dropped.
        max_tokens = request.max_tokens if request.max_tokens != 0 else 1
        return self.gen.sampling_params(
            prompt_len, max_tokens, n=request.n, temperature=request.temperature,
            top_p=request.top_p, top_k=request.top_k, stop=request.stop, seed=request.seed,
            presence_penalty=request.presence_penalty, frequency_penalty=request.frequency_penalty,
            min_tokens=request.min_tokens, ignore_eos=request.ignore_eos,
            logprobs=request.logprobs, prompt_logprobs=prompt_logprobs,
            logit_bias=logit_bias_ids(request.logit_bias, len(self.tokenizer)),
            structured_outputs=structured_outputs_params(request.response_format,
                                                         request.structured_outputs),
        )

    async def create(
        self, request: CompletionRequest, *, priority: int = 0
    ) -> dict[str, Any] | AsyncIterator[dict]:
        """A response dict, or (``stream=true``) an iterator of chunk dicts."""
        adapter = self.gen.resolve(request.model)
        if request.suffix:
            raise BadRequest("suffix is not supported", param="suffix")
        if request.best_of is not None and request.best_of != request.n:
            raise BadRequest("best_of other than n is not supported", param="best_of")
        prompts = self._prompts(request)
        params = [self._params(request, len(ids)) for _, ids in prompts]
        for p in params:
            self.gen.check_supported(adapter, p)
        request_id = new_id("cmpl")
        admission = self.gen.admitted(request.model, request.n * len(prompts))
        await admission.__aenter__()
        streams = [
            self.gen.stream(request.model, ids, p, adapter, f"{request_id}-{i}", priority)
            for i, ((_, ids), p) in enumerate(zip(prompts, params, strict=True))
        ]
        from vllm.utils.async_utils import merge_async_iterators  # lazy: vLLM imports slowly

        # vLLM's merge: (prompt index, output) as each prompt's stream produces, one pending
        # read per stream (backpressure); closing it cancels and closes every stream, which
        # aborts their requests in the engine.
        merged = merge_async_iterators(*streams)
        if request.stream:
            return self._chunks(request, request_id, prompts, merged, admission)
        try:
            return await self._collect(request, request_id, prompts, merged)
        finally:
            await merged.aclose()
            await admission.__aexit__(None, None, None)

    def _logprobs(self, request, prompt, choice: _Choice, prompt_steps, offset: int = 0):
        """The legacy logprobs object for a choice, echoed prompt first when asked."""
        if request.logprobs is None:
            return None
        token_ids, steps = list(choice.token_ids), list(choice.steps)
        if request.echo and prompt_steps is not None:
            token_ids = list(prompt[1]) + token_ids
            steps = list(prompt_steps) + steps
        return completion_logprobs(token_ids, steps, request.logprobs, self.tokenizer, offset)

    async def _collect(self, request, request_id, prompts, merged) -> dict[str, Any]:
        n = request.n
        choices = [_Choice() for _ in range(len(prompts) * n)]
        prompt_steps: list[Any] = [None] * len(prompts)
        async for p, output in merged:
            if output.prompt_logprobs is not None and prompt_steps[p] is None:
                prompt_steps[p] = output.prompt_logprobs
            for out in output.outputs:
                choice = choices[p * n + out.index]
                choice.finish_reason = out.finish_reason or choice.finish_reason
                if request.max_tokens == 0:
                    continue
                choice.text += out.text
                choice.token_ids.extend(out.token_ids)
                if out.logprobs:
                    choice.steps.extend(out.logprobs)
        result = []
        for index, choice in enumerate(choices):
            p = index // n
            text = (prompts[p][0] if request.echo else "") + choice.text
            result.append({
                "index": index,
                "text": text,
                "logprobs": self._logprobs(request, prompts[p], choice, prompt_steps[p]),
                "finish_reason": "length" if request.max_tokens == 0 else choice.finish_reason,
                "prompt_logprobs": _prompt_logprobs_json(prompts[p][1], prompt_steps[p])
                if request.prompt_logprobs is not None else None,
                **({"prompt_token_ids": prompts[p][1], "token_ids": choice.token_ids}
                   if request.return_token_ids else {}),
            })
        prompt_tokens = sum(len(ids) for _, ids in prompts)
        completion_tokens = sum(len(c.token_ids) for c in choices)
        return {
            "id": request_id, "object": "text_completion", "created": int(time.time()),
            "model": request.model, "choices": result,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    async def _chunks(self, request, request_id, prompts, merged, admission):
        created = int(time.time())
        n = request.n
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        usage_field = {"usage": None} if include_usage else {}
        echoed = [False] * (len(prompts) * n)
        offsets = [0] * (len(prompts) * n)
        completion_tokens = 0

        def chunk(choice: dict) -> dict:
            return {"id": request_id, "object": "text_completion", "created": created,
                    "model": request.model, "choices": [choice], **usage_field}

        try:
            async for p, output in merged:
                for out in output.outputs:
                    index = p * n + out.index
                    text, piece = "", _Choice()
                    if request.echo and not echoed[index]:
                        echoed[index] = True
                        text = prompts[p][0]
                        if request.logprobs is not None and output.prompt_logprobs is not None:
                            piece.token_ids = list(prompts[p][1])
                            piece.steps = list(output.prompt_logprobs)
                    if request.max_tokens != 0:
                        text += out.text
                        piece.token_ids += list(out.token_ids)
                        piece.steps += list(out.logprobs or [])
                        completion_tokens += len(out.token_ids)
                    finish = out.finish_reason
                    if request.max_tokens == 0 and finish:
                        finish = "length"
                    if not text and not finish:
                        continue
                    logprobs = None
                    if request.logprobs is not None:
                        logprobs = completion_logprobs(piece.token_ids, piece.steps,
                                                       request.logprobs, self.tokenizer,
                                                       offsets[index])
                    offsets[index] += len(text)
                    yield chunk({"index": index, "text": text, "logprobs": logprobs,
                                 "finish_reason": finish})
            if include_usage:
                prompt_tokens = sum(len(ids) for _, ids in prompts)
                yield {"id": request_id, "object": "text_completion", "created": created,
                       "model": request.model, "choices": [],
                       "usage": {"prompt_tokens": prompt_tokens,
                                 "completion_tokens": completion_tokens,
                                 "total_tokens": prompt_tokens + completion_tokens}}
        finally:
            await merged.aclose()
            await admission.__aexit__(None, None, None)
