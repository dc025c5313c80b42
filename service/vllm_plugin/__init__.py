"""tuneserve's vLLM general plugin: our own CPU multi-LoRA ops inside vLLM's processes.

vLLM calls :func:`register` (entry point group ``vllm.general_plugins`` in
``pyproject.toml``) in every process it starts — API process, engine core, workers —
before the model is built. On the CPU platform of the vLLM version it was written for, it
points vLLM at :class:`~service.vllm_plugin.grouped_lora.GroupedPunicaWrapperCPU`, which
keeps base rows base and runs each adapter's rows as one matmul pair (see that module).
Anywhere else (GPU, another vLLM version, or ``TUNESERVE_CPU_LORA_OPS=vllm``) it leaves
vLLM as it is and says so in one log line.
"""

from __future__ import annotations

import functools
import logging
import os

logger = logging.getLogger("tuneserve.vllm_plugin")

#: The vLLM release whose CPU LoRA internals this plugin was written and tested against.
SUPPORTED_VLLM_VERSION = "0.32.0"
#: ``grouped`` (default): tuneserve's ops; ``vllm``: vLLM's own CPU ops (for comparison).
OPS_ENV = "TUNESERVE_CPU_LORA_OPS"
#: ``1``: keep vLLM's CPU torch.compile with LoRA enabled (vLLM switches it off, as its
#: own ops are not compile-safe; ours run as opaque custom ops under compilation).
#: ``0`` (default): vLLM's choice. Compiling costs about two minutes at every engine start
#: on 2 cores (vLLM 0.32's CPU AOT cache fails to load, so it compiles again each time);
#: BENCHMARKS.md has what it buys.
COMPILE_ENV = "TUNESERVE_CPU_LORA_COMPILE"
GROUPED = "tuneserve-grouped"
VLLM_OWN = "vllm"
WRAPPER_QUALNAME = "service.vllm_plugin.grouped_lora.GroupedPunicaWrapperCPU"

_decision: tuple[str, str] | None = None  # (path, why), decided once per process


def lora_ops_path() -> tuple[str, str]:
    """Which LoRA ops this process's vLLM uses, and why: ``(GROUPED | VLLM_OWN, reason)``.
    The engine processes decide the same way from the same environment."""
    global _decision
    if _decision is None:
        _decision = _decide()
    return _decision


def _decide() -> tuple[str, str]:
    choice = os.environ.get(OPS_ENV, "grouped").strip().lower()
    if choice == VLLM_OWN:
        return VLLM_OWN, f"{OPS_ENV}=vllm"
    if choice != "grouped":
        return VLLM_OWN, f"{OPS_ENV}={choice!r} is not 'grouped' or 'vllm'"
    import vllm

    if vllm.__version__ != SUPPORTED_VLLM_VERSION:
        return VLLM_OWN, (f"vLLM {vllm.__version__} is not {SUPPORTED_VLLM_VERSION}, the "
                          "version these ops were written for")
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return VLLM_OWN, "not the CPU platform (vLLM's own kernels stay)"
    return GROUPED, f"vLLM {vllm.__version__} on CPU"


def register() -> None:
    """vLLM's entry point. Idempotent: patches at most once per process."""
    path, why = lora_ops_path()
    if path != GROUPED:
        logger.info("tuneserve CPU LoRA ops not installed (%s): using vLLM's own", why)
        return
    from vllm.lora.model_manager import LoRAModelManager
    from vllm.platforms import current_platform

    platform_cls = type(current_platform)
    if getattr(platform_cls, "_tuneserve_lora_patched", False):
        return
    platform_cls.get_punica_wrapper = classmethod(lambda cls: WRAPPER_QUALNAME)
    LoRAModelManager.activate_adapter = _forgetting_slots(LoRAModelManager.activate_adapter)
    compile_kept = os.environ.get(COMPILE_ENV, "0").strip().lower() in {"1", "true", "yes", "on"}
    if compile_kept:
        platform_cls.check_and_update_config = _compiling_with_lora(
            platform_cls.check_and_update_config)
    platform_cls._tuneserve_lora_patched = True
    logger.info("tuneserve CPU LoRA ops installed (%s): %s; torch.compile with LoRA %s",
                why, WRAPPER_QUALNAME, "kept" if compile_kept else f"off (vLLM's default; {COMPILE_ENV}=1 keeps it)")


def _compiling_with_lora(check_and_update_config):
    """Wrap ``CpuPlatform.check_and_update_config`` so that enabling LoRA no longer turns
    compilation off: the platform's settings are chosen as for a model without LoRA (its
    only LoRA rule is that switch), then the LoRA config is put back."""

    def check_with_lora_hidden(cls, vllm_config) -> None:
        lora_config = vllm_config.lora_config
        vllm_config.lora_config = None
        try:
            check_and_update_config(vllm_config)
        finally:
            vllm_config.lora_config = lora_config

    return classmethod(check_with_lora_hidden)


def _forgetting_slots(activate):
    """Wrap ``LoRAModelManager.activate_adapter`` so the grouped wrapper re-measures the
    rank of a slot whenever an adapter is written into it."""

    @functools.wraps(activate)
    def activate_adapter(self, lora_id: int) -> bool:
        activated = activate(self, lora_id)
        if activated and lora_id in self.lora_index_to_id:
            slot = self.lora_index_to_id.index(lora_id)
            for wrapper in getattr(self, "punica_wrapper_mapping", {}).values():
                forget = getattr(wrapper, "forget_slot", None)
                if forget is not None:
                    forget(slot)
        return activated

    return activate_adapter
