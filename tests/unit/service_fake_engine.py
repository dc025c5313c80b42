"""A fake engine with the :class:`service.engine.Engine` interface, for fast tests of the
HTTP layer (error envelope, auth, admission, SSE framing). It "generates" a fixed text
with the tiny model's tokenizer. Every feature is also tested on real vLLM."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FakeCompletion:
    index: int
    text: str
    token_ids: list[int]
    logprobs: Any = None
    finish_reason: str | None = None


@dataclass
class FakeOutput:
    outputs: list[FakeCompletion]
    prompt_logprobs: Any = None
    finished: bool = False


@dataclass
class FakeLogprob:
    logprob: float
    rank: int = 1
    decoded_token: str | None = None


@dataclass
class FakeEngine:
    model_path: Path
    tokenizer: Any
    max_model_len: int = 256
    reply: str = "docker ps"
    delay_s: float = 0.0
    adapters: dict[str, Any] = field(default_factory=dict)
    aborted: list[str] = field(default_factory=list)
    fail_add: str | None = None
    calls: list[tuple[list[int], Any, Any]] = field(default_factory=list)
    priorities: list[int] = field(default_factory=list)
    stall_after: int | None = None  # calls after this many never answer (until aborted)

    async def generate(self, prompt_ids, params, adapter, request_id, priority=0):
        self.calls.append((prompt_ids, params, adapter))
        self.priorities.append(priority)
        if self.stall_after is not None and len(self.calls) > self.stall_after:
            try:
                await asyncio.Event().wait()
            except (asyncio.CancelledError, GeneratorExit):
                self.aborted.append(request_id)
                raise
        suffix = f" ({adapter.name})" if adapter else ""
        ids = self.tokenizer(self.reply + suffix, add_special_tokens=False)["input_ids"]
        # As a model that ends its reply: "stop" when the reply fits, "length" when cut.
        end_reason = "length" if len(ids) >= params.max_tokens else "stop"
        ids = ids[: params.max_tokens]
        prompt_lp = None
        if params.prompt_logprobs is not None:
            prompt_lp = [None] + [{t: FakeLogprob(-1.0)} for t in prompt_ids[1:]]
        try:
            for step, token in enumerate(ids):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                last = step == len(ids) - 1
                outs = []
                for i in range(params.n):
                    lp = None
                    if params.logprobs is not None:
                        lp = [{token: FakeLogprob(-0.5, 1, self.tokenizer.decode([token]))}]
                    outs.append(FakeCompletion(i, self.tokenizer.decode([token]), [token], lp,
                                               end_reason if last else None))
                yield FakeOutput(outs, prompt_lp if step == 0 else None, last)
        except asyncio.CancelledError:
            self.aborted.append(request_id)
            raise
        except GeneratorExit:
            self.aborted.append(request_id)
            raise

    async def add_adapter(self, handle) -> None:
        if self.fail_add:
            raise ValueError(self.fail_add)
        self.adapters[handle.name] = handle

    async def remove_adapter(self, handle) -> None:
        self.adapters.pop(handle.name, None)

    async def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None
