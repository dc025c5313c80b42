"""The transformers+PEFT engine: serves adapters vLLM cannot (prompt and prefix tuning,
IA3, VeRA, AdaLoRA, DoRA) and full fine-tunes (each its own model) behind the same :class:`service.engine.Engine` interface.

Design (simple and correct first): adapters are grouped by PEFT type, each group one
``PeftModel`` over its own copy of the base (PEFT cannot hold, say, IA3 and prompt
tuning adapters in one model), adapters loaded by name with ``load_adapter`` and picked
per request with ``set_adapter``. Requests run one at a time on a single worker thread
(no batching) so the event loop keeps streaming; each streams ``RequestOutput``-shaped
deltas, the fields service/chat and service/completions read from vLLM's. Sampling
features it does not implement are refused by name (:func:`unsupported_param`), never
ignored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.engine import AdapterHandle

logger = logging.getLogger(__name__)

# PEFT types this engine serves (adapter_config.json ``peft_type``); LoRA only with DoRA
# (plain LoRA goes to vLLM).
SERVED_PEFT_TYPES = frozenset({"PROMPT_TUNING", "PREFIX_TUNING", "IA3", "VERA", "ADALORA", "LORA"})

# SamplingParams fields → (the request parameter a client set, the value meaning "unused").
_REFUSED: dict[str, tuple[str, Any]] = {
    "n": ("n", 1),
    "logprobs": ("logprobs", None),
    "prompt_logprobs": ("prompt_logprobs", None),
    "logit_bias": ("logit_bias", None),
    "structured_outputs": ("response_format", None),
    "presence_penalty": ("presence_penalty", 0.0),
    "frequency_penalty": ("frequency_penalty", 0.0),
    "min_tokens": ("min_tokens", 0),
    "bad_words": ("bad_words", None),
    "allowed_token_ids": ("allowed_token_ids", None),
    "include_stop_str_in_output": ("include_stop_str_in_output", False),
}


# ignore_eos: an EOS id no vocabulary has never matches (transformers warns on negatives).
_NO_TOKEN = 2**31 - 1


class UnsupportedParam(ValueError):
    """A sampling parameter this engine does not implement; ``parameter`` names it
    (service.generation turns it into an OpenAI 400 with that ``param``)."""

    def __init__(self, message: str, parameter: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def unsupported_param(params: Any) -> UnsupportedParam | None:
    """The refusal for the first feature in vLLM ``params`` this engine cannot honour."""
    for attr, (param, unused) in _REFUSED.items():
        value = getattr(params, attr, unused)
        if value is not None and value != unused and value not in ({}, []):
            what = "structured outputs (response_format, structured_outputs or a required " \
                   "tool_choice)" if attr == "structured_outputs" else param
            return UnsupportedParam(
                f"{what} is not supported for this model: it is served by the transformers+"
                "PEFT engine (adapters vLLM cannot serve), which implements max_tokens, "
                "temperature, top_p, top_k, min_p, repetition_penalty, seed and stop only",
                param,
            )
    return None


@dataclass
class CompletionDelta:
    """The fields of vLLM's ``CompletionOutput`` the service reads."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: Any = None


@dataclass
class RequestDelta:
    """The fields of vLLM's ``RequestOutput`` the service reads."""

    request_id: str
    outputs: list[CompletionDelta]
    finished: bool = False
    prompt_logprobs: Any = None
    prompt_token_ids: list[int] = field(default_factory=list)


def peft_type(adapter_dir: str | Path) -> str:
    return str(json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
               .get("peft_type", "")).upper()


def _peft_name(handle: AdapterHandle) -> str:
    """The name inside PEFT: never the client's (PEFT warns, and may re-initialise weights,
    when an adapter name is part of its weight prefixes, e.g. "pt" in "prompt_tuning_")."""
    return f"adapter-{handle.int_id}"


def _clear_dora_cache(model: Any) -> None:
    """Drop every DoRA layer's cached weights (PEFT keeps them per adapter name and does not
    drop a deleted adapter's); the remaining adapters' are recomputed on their next use."""
    for module in model.modules():
        if hasattr(module, "_cache_clear") and hasattr(module, "_dora_cache"):
            module._cache_clear()


class _Group:
    """One PeftModel (own base copy) holding the adapters of one PEFT type."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.adapters: set[str] = set()


class PeftEngine:
    """Base + PEFT adapters in transformers, one request at a time on a worker thread."""

    def __init__(self, model_path: Path, tokenizer: Any | None = None, dtype: Any = None) -> None:
        import torch
        from transformers import AutoTokenizer, GenerationConfig

        self.model_path = Path(model_path)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_path)
        self.dtype = dtype or torch.float32
        try:
            self._gen_config = GenerationConfig.from_pretrained(model_path)
        except OSError:
            self._gen_config = GenerationConfig()
        self._groups: dict[str, _Group] = {}
        self._where: dict[str, str] = {}  # adapter name → group key
        # One thread: transformers models are not safe to run concurrently, and set_adapter
        # is model-wide state.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="peft-engine")

    # -- adapters ------------------------------------------------------------------------
    def _load(self, handle: AdapterHandle) -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        if not (Path(handle.path) / "adapter_config.json").is_file():
            # A full fine-tune: a whole checkpoint, its own model (a group of one).
            model = AutoModelForCausalLM.from_pretrained(handle.path, dtype=self.dtype).eval()
            key = f"FULL:{_peft_name(handle)}"
            self._groups[key] = _Group(model)
            self._groups[key].adapters.add(_peft_name(handle))
            self._where[_peft_name(handle)] = key
            return
        key = peft_type(handle.path)
        if key not in SERVED_PEFT_TYPES:
            raise ValueError(f"peft_type {key or 'missing'} is not served by the PEFT engine")
        group = self._groups.get(key)
        if group is None:
            base = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype)
            model = PeftModel.from_pretrained(base, handle.path, adapter_name=_peft_name(handle))
            model.eval()
            group = self._groups[key] = _Group(model)
        else:
            group.model.load_adapter(handle.path, adapter_name=_peft_name(handle))
        group.adapters.add(_peft_name(handle))
        self._where[_peft_name(handle)] = key

    def _unload(self, handle: AdapterHandle) -> None:
        name = _peft_name(handle)
        key = self._where.pop(name, None)
        if key is None:
            return
        group = self._groups[key]
        group.adapters.discard(name)
        if not group.adapters:  # last one: free the base copy
            del self._groups[key]
        else:
            if group.model.active_adapter == name:
                group.model.set_adapter(next(iter(group.adapters)))
            group.model.delete_adapter(name)
            _clear_dora_cache(group.model)

    async def add_adapter(self, handle: AdapterHandle) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, self._load, handle)
        except Exception as exc:  # PEFT/torch raise assorted types for a bad adapter
            raise ValueError(f"the PEFT engine could not load the adapter: {exc}") from exc

    async def remove_adapter(self, handle: AdapterHandle) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._unload, handle)

    # -- generation ----------------------------------------------------------------------
    def _generate_kwargs(self, params: Any) -> dict[str, Any]:
        from transformers import GenerationConfig

        eos: list[int] = []
        if not params.ignore_eos:
            configured = self._gen_config.eos_token_id
            eos = [configured] if isinstance(configured, int) else list(configured or [])
            if self.tokenizer.eos_token_id is not None:
                eos.append(self.tokenizer.eos_token_id)
        eos += list(params.stop_token_ids or [])
        sample = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample and params.top_p < 1 else None,
            top_k=params.top_k if sample and params.top_k and params.top_k > 0 else None,
            min_p=params.min_p if sample and params.min_p else None,
            repetition_penalty=params.repetition_penalty
            if params.repetition_penalty and params.repetition_penalty != 1.0 else None,
            eos_token_id=sorted(set(eos)) or [_NO_TOKEN],
            pad_token_id=self.tokenizer.pad_token_id or 0,
        )
        return {"generation_config": config}

    def _run(self, adapter: str, prompt_ids: list[int], params: Any, emit, stop_flag) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        if stop_flag.is_set():
            return
        group = self._groups.get(self._where.get(adapter, ""))
        if group is None or adapter not in group.adapters:
            raise RuntimeError("the adapter is not loaded in the PEFT engine")
        from peft import PeftModel
        from peft.helpers import DoraCaching

        if isinstance(group.model, PeftModel):  # a full fine-tune has no adapters
            group.model.set_adapter(adapter)

        class Streamer(BaseStreamer):
            first = True

            def put(self, value):
                if self.first:  # generate() puts the prompt first
                    self.first = False
                    return
                emit(int(value.reshape(-1)[0]))

            def end(self):
                pass

        class Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop_flag.is_set(), dtype=torch.bool)

        if params.seed is not None:
            torch.manual_seed(params.seed)  # one request at a time: the global RNG is ours
        ids = torch.tensor([prompt_ids])
        # PEFT's DoRA caching: DoRA recomputes B @ A and the weight norm of every layer at
        # every forward pass (per generated token) unless cached; the cached values are the
        # same tensors, so answers do not change. The cost is one weight-sized tensor per
        # DoRA layer and adapter, freed when the adapter is unloaded (_clear_dora_cache).
        with DoraCaching(), torch.inference_mode():
            group.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), streamer=Streamer(),
                stopping_criteria=StoppingCriteriaList([Stop()]),
                **self._generate_kwargs(params),
            )

    async def generate(
        self, prompt_ids: list[int], params: Any, adapter: AdapterHandle | None, request_id: str,
        priority: int = 0,
    ) -> AsyncIterator[RequestDelta]:
        if adapter is None:
            raise ValueError("the PEFT engine serves adapters only; the base runs on vLLM")
        refusal = unsupported_param(params)
        if refusal is not None:
            raise refusal
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[int | BaseException | None] = asyncio.Queue()
        stop_flag = threading.Event()

        def emit(token: int) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, token)

        def work() -> None:
            try:
                self._run(_peft_name(adapter), prompt_ids, params, emit, stop_flag)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            else:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        future = loop.run_in_executor(self._pool, work)
        stops = [s for s in ([params.stop] if isinstance(params.stop, str) else params.stop or [])
                 if s]
        hold = max((len(s) for s in stops), default=1) - 1
        eos = set(self._generate_kwargs(params)["generation_config"].eos_token_id)
        tokens: list[int] = []
        sent = 0  # characters of the decoded text already streamed
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                finish, stop_reason, new = None, None, []
                if item is None:
                    finish = "length" if len(tokens) >= params.max_tokens else "stop"
                else:
                    tokens.append(item)
                    new = [item]
                    if item in eos:
                        finish, stop_reason = "stop", (item if item in (params.stop_token_ids
                                                                        or []) else None)
                    elif len(tokens) >= params.max_tokens:
                        finish = "length"
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                for s in stops:
                    at = text.find(s)
                    if at != -1:
                        text, finish, stop_reason = text[:at], "stop", s
                if finish is None:
                    # Hold back an unfinished UTF-8 character and a possible stop-string start.
                    end = len(text) - hold
                    while end > sent and text[end - 1] == "\ufffd":
                        end -= 1
                    text = text[:max(end, sent)]
                delta = text[sent:]
                sent = len(text)
                if finish is not None or new or delta:
                    yield RequestDelta(request_id, [CompletionDelta(
                        0, delta, new, finish, stop_reason)], finished=finish is not None)
                if finish is not None:
                    break
        finally:
            stop_flag.set()  # a finished, cancelled or closed stream ends its generate()
            del future  # work() never raises: nothing to retrieve

    # -- health --------------------------------------------------------------------------
    async def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._groups.clear()
