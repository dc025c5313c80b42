"""What chat and completions share: model resolution, sampling parameters, admission
control (max in-flight → 429), prompt-length checks, metrics and the engine stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from service import metrics, rate_limits
from service.engine import AdapterHandle, Engine
from service.errors import BadRequest, ModelNotFound, Overloaded, PromptTooLong, Unavailable


def _is_client_error(exc: BaseException) -> bool:
    from vllm.exceptions import VLLMClientError

    return isinstance(exc, ValueError | TypeError | VLLMClientError)


def _client_error(exc: BaseException) -> Exception:
    """A 400 for vLLM's request validation errors (their message names the problem)."""
    if not _is_client_error(exc):
        return exc if isinstance(exc, Exception) else RuntimeError(str(exc))
    message = exc.args[0] if exc.args else str(exc)
    return BadRequest(str(message), param=getattr(exc, "parameter", None))


class Generator:
    """Turns validated requests into engine streams, counting everything on the way."""

    def __init__(self, engine: Engine, registry: Any, base_id: str, max_in_flight: int) -> None:
        self.engine = engine
        self.registry = registry
        self.base_id = base_id
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        # Defaults the checkpoint's generation_config asks for (as the stock server does).
        self.default_sampling: dict[str, Any] = dict(getattr(engine, "default_sampling", {}) or {})

    # -- resolution --------------------------------------------------------------------
    def resolve(self, model: str) -> AdapterHandle | None:
        """None for the base, the adapter's handle for an adapter; 404 otherwise."""
        if model == self.base_id:
            return None
        handle = self.registry.handle(model)
        if handle is None:
            raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
        return handle

    def sampling_params(
        self, prompt_len: int, max_tokens: int | None, *, param_name: str = "max_tokens", **kw: Any
    ):
        """vLLM ``SamplingParams`` for one prompt; raises 400 when it cannot fit the context."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        limit = self.engine.max_model_len
        if prompt_len >= limit:
            raise PromptTooLong(
                f"This model's maximum context length is {limit} tokens, but the prompt has "
                f"{prompt_len} tokens. Shorten the prompt.", param="messages",
            )
        if max_tokens is None:
            max_tokens = limit - prompt_len
        elif prompt_len + max_tokens > limit:
            raise PromptTooLong(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for "
                f"the completion). Reduce the prompt or {param_name}.", param=param_name,
            )
        options = {**self.default_sampling, **{k: v for k, v in kw.items() if v is not None}}
        try:
            return SamplingParams(
                max_tokens=max_tokens, output_kind=RequestOutputKind.DELTA, **options
            )
        except Exception as exc:
            raise _client_error(exc) from None

    @staticmethod
    def check_supported(adapter: AdapterHandle | None, params: Any) -> None:
        """400 naming the parameter when ``adapter``'s engine cannot honour ``params``
        (the PEFT engine implements fewer sampling features than vLLM). Called before
        anything is admitted or streamed."""
        if adapter is not None and adapter.engine == "peft":
            from service.peft_engine import unsupported_param

            refusal = unsupported_param(params)
            if refusal is not None:
                raise BadRequest(str(refusal), param=refusal.parameter)

    # -- admission and streaming -------------------------------------------------------
    @asynccontextmanager
    async def admitted(self, model: str, sequences: int = 1):
        """Hold ``sequences`` in-flight slots for the request (``n`` × prompts: each is a
        sequence in the engine); 429 with Retry-After when they do not fit now, 400 when
        they never could."""
        if sequences > self.max_in_flight:
            raise BadRequest(
                f"the request asks for {sequences} sequences (n x prompts), over the server's "
                f"limit of {self.max_in_flight} in flight; send fewer", param="n",
            )
        if self.in_flight + sequences > self.max_in_flight:
            raise Overloaded(
                f"the server is at its limit of {self.max_in_flight} sequences in flight; "
                "retry shortly", headers={"Retry-After": "1"},
            )
        self.in_flight += sequences
        metrics.IN_FLIGHT.labels(model).inc(sequences)
        try:
            yield
        finally:
            self.in_flight -= sequences
            metrics.IN_FLIGHT.labels(model).dec(sequences)

    async def stream(
        self, model: str, prompt_ids: list[int], params: Any, adapter: AdapterHandle | None,
        request_id: str, priority: int = 0,
    ) -> AsyncIterator[Any]:
        """Engine outputs for one prompt; records TTFT, latency and token counts.

        Closing or cancelling this iterator (client gone) aborts the request in the engine.
        """
        started = time.perf_counter()
        first = True
        completion_tokens = 0
        metrics.PROMPT_TOKENS.labels(model).inc(len(prompt_ids))
        outputs = self.engine.generate(prompt_ids, params, adapter, request_id, priority)
        try:
            async for output in outputs:
                new_tokens = sum(len(o.token_ids) for o in output.outputs)
                if first and new_tokens:
                    metrics.TTFT.labels(model).observe(time.perf_counter() - started)
                    first = False
                completion_tokens += new_tokens
                yield output
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _is_client_error(exc):  # vLLM's own request validation
                raise _client_error(exc) from None
            if exc.__class__.__name__ in ("EngineDeadError", "EngineGenerateError"):
                raise Unavailable("the engine is not available; retry later",
                                  headers={"Retry-After": "5"}) from exc
            raise
        finally:
            # Close the engine stream now (not at garbage collection): an unfinished
            # request is aborted in the engine as soon as its client is gone.
            await outputs.aclose()
            rate_limits.charge_tokens(len(prompt_ids) + completion_tokens)
            metrics.COMPLETION_TOKENS.labels(model).inc(completion_tokens)
            metrics.E2E.labels(model).observe(time.perf_counter() - started)
