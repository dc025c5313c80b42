"""The engine layer: one small interface between the API and the model runtime.

``generate(prompt_ids, params, adapter, request_id)`` streams vLLM ``RequestOutput``
deltas; ``add_adapter`` / ``remove_adapter`` hot-(un)load LoRA adapters. :class:`VllmEngine`
puts vLLM's ``AsyncLLM`` (``enable_lora``) behind it; :class:`RoutedEngine` adds the
transformers+PEFT engine (service/peft_engine.py) for adapters vLLM cannot serve. Tests of
HTTP error paths may pass a fake with the same methods; every feature is also tested on the
real engine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from service.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterHandle:
    """What the engine needs to run requests through one loaded adapter."""

    name: str
    int_id: int
    path: str
    # Which engine serves it: "vllm" (LoRA) or "peft" (service/peft_engine.py).
    engine: str = "vllm"


class Engine(Protocol):
    """The interface the API layer talks to."""

    model_path: Path
    max_model_len: int
    tokenizer: Any

    def generate(
        self, prompt_ids: list[int], params: Any, adapter: AdapterHandle | None, request_id: str,
        priority: int = 0,
    ) -> AsyncIterator[Any]:
        """Stream ``RequestOutput`` deltas; cancelling the iteration aborts the request.
        A higher ``priority`` value is scheduled later (batch requests)."""
        ...

    async def add_adapter(self, handle: AdapterHandle) -> None:
        """Load an adapter (raises ValueError with the engine's reason on failure)."""
        ...

    async def remove_adapter(self, handle: AdapterHandle) -> None:
        """Unload an adapter; requests already running on it are not affected."""
        ...

    async def check_health(self) -> None:
        """Raise if the engine cannot serve."""
        ...

    def shutdown(self) -> None: ...


def effective_max_model_len(requested: int, model_path: Path) -> int:
    """``requested`` capped at the checkpoint's own context (vLLM refuses more)."""
    import json

    config = json.loads((Path(model_path) / "config.json").read_text())
    config = config.get("text_config", config)
    limit = config.get("max_position_embeddings")
    return min(requested, int(limit)) if limit else requested


def engine_args(settings: Settings, model_path: Path, served_name: str):
    """The ``AsyncEngineArgs`` for ``settings`` (also used to start the stock server in
    benchmarks with identical options)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=str(model_path),
        served_model_name=served_name,
        dtype=settings.dtype,
        max_model_len=effective_max_model_len(settings.max_model_len, model_path),
        enable_lora=True,
        max_lora_rank=settings.max_lora_rank,
        max_loras=settings.max_loras,
        max_cpu_loras=settings.max_cpu_loras,
        max_num_seqs=settings.max_num_seqs,
        seed=settings.seed,
        # Online requests (priority 0) go before queued batch requests (service/batches).
        scheduling_policy="priority",
        disable_log_stats=False,  # keeps vLLM's Prometheus engine metrics on /metrics
        # Structured outputs (response_format, tools): xgrammar (measured on CPU), compact
        # JSON. vLLM reads this flag per engine, not per request; a small model left free
        # to add whitespace loops on it, and tool calls render compact in training
        # (training/tool_format.py).
        structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
    )


class VllmEngine:
    """vLLM ``AsyncLLM`` with LoRA enabled, behind the :class:`Engine` interface."""

    def __init__(self, llm: Any, model_path: Path) -> None:
        self._llm = llm
        self.model_path = model_path
        self.max_model_len: int = llm.model_config.max_model_len
        # The Hugging Face tokenizer itself (not vLLM's wrapper): training.chat_format is
        # written against it, so serving formats prompts exactly as training did.
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        # Sampling defaults from the checkpoint's generation_config, as vLLM's server applies.
        defaults = dict(llm.model_config.get_diff_sampling_param())
        defaults.pop("max_tokens", None)
        self.default_sampling = defaults

    @classmethod
    def start(cls, settings: Settings, model_path: Path, served_name: str) -> VllmEngine:
        """Build the engine (≈ a minute on CPU). Call from the server's event loop."""
        # vLLM's CPU backend sizes its KV cache from this variable, not from memory fractions.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_space_gib))
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        if current_platform.is_cpu():
            from service.cpu_threads import apply_threads_bind

            logger.info("CPU compute threads bind to: %s",
                        apply_threads_bind(settings.cpu_threads_bind))

        from service import metrics
        from service.vllm_plugin import lora_ops_path

        llm = AsyncLLM.from_engine_args(engine_args(settings, model_path, served_name))
        path, why = lora_ops_path()
        metrics.LORA_OPS.info({"path": path, "reason": why})
        logger.info("multi-LoRA ops: %s (%s)", path, why)
        return cls(llm, model_path)

    def generate(
        self, prompt_ids: list[int], params: Any, adapter: AdapterHandle | None, request_id: str,
        priority: int = 0,
    ) -> AsyncIterator[Any]:
        from vllm.inputs import TokensPrompt

        if adapter is not None and not os.path.isfile(os.path.join(adapter.path,
                                                                   "adapter_config.json")):
            # vLLM reads the folder again whenever it reloads the adapter into a LoRA slot,
            # and a missing folder there kills the whole engine: refuse this one request.
            from service.errors import NotFound

            raise NotFound(f"the adapter {adapter.name!r} is being removed (its folder is "
                           "gone)", param="model", code="model_not_found")
        return self._llm.generate(
            TokensPrompt(prompt_token_ids=prompt_ids),
            params,
            request_id,
            lora_request=self._lora_request(adapter),
            priority=priority,
        )

    @staticmethod
    def _lora_request(adapter: AdapterHandle | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(
            lora_name=adapter.name, lora_int_id=adapter.int_id, lora_path=adapter.path
        )

    async def add_adapter(self, handle: AdapterHandle) -> None:
        try:
            await self._llm.add_lora(self._lora_request(handle))
        except Exception as exc:  # vLLM raises assorted types for a bad adapter
            raise ValueError(f"the engine could not load the adapter: {exc}") from exc

    async def remove_adapter(self, handle: AdapterHandle) -> None:
        await self._llm.remove_lora(handle.int_id)

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    async def check_health(self) -> None:
        await self._llm.check_health()

    async def do_log_stats(self) -> None:
        await self._llm.do_log_stats()

    def shutdown(self) -> None:
        self._llm.shutdown()


class RoutedEngine:
    """vLLM for the base and LoRA adapters, the transformers+PEFT engine (started on first
    use) for adapters whose handle says ``engine="peft"``; one :class:`Engine` to the API."""

    def __init__(self, primary: Any, peft_factory: Any = None) -> None:
        self.primary = primary
        self.model_path = primary.model_path
        self.max_model_len = primary.max_model_len
        self.tokenizer = primary.tokenizer
        self._peft_factory = peft_factory or self._default_peft
        self.peft: Any = None

    def _default_peft(self) -> Any:
        from service.peft_engine import PeftEngine

        return PeftEngine(self.model_path, self.tokenizer)

    def __getattr__(self, name: str) -> Any:  # default_sampling, abort, do_log_stats...
        return getattr(self.primary, name)

    def _for(self, handle: AdapterHandle | None) -> Any:
        if handle is not None and handle.engine == "peft":
            if self.peft is None:
                self.peft = self._peft_factory()
            return self.peft
        return self.primary

    def generate(self, prompt_ids: list[int], params: Any, adapter: AdapterHandle | None,
                 request_id: str, priority: int = 0) -> AsyncIterator[Any]:
        return self._for(adapter).generate(prompt_ids, params, adapter, request_id, priority)

    async def add_adapter(self, handle: AdapterHandle) -> None:
        await self._for(handle).add_adapter(handle)

    async def remove_adapter(self, handle: AdapterHandle) -> None:
        await self._for(handle).remove_adapter(handle)

    async def check_health(self) -> None:
        await self.primary.check_health()

    def shutdown(self) -> None:
        if self.peft is not None:
            self.peft.shutdown()
        self.primary.shutdown()
