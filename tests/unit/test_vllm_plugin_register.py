"""The vLLM plugin's decision (where it patches, where it refuses) and its idempotency."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import service.vllm_plugin as plugin


@pytest.fixture(autouse=True)
def fresh_decision(monkeypatch):
    monkeypatch.setattr(plugin, "_decision", None)
    monkeypatch.delenv(plugin.OPS_ENV, raising=False)


def test_grouped_by_default_on_cpu_vllm_0_32():
    path, why = plugin.lora_ops_path()
    assert path == plugin.GROUPED, why


def test_switch_off_for_comparison(monkeypatch):
    monkeypatch.setenv(plugin.OPS_ENV, "vllm")
    assert plugin.lora_ops_path() == (plugin.VLLM_OWN, "TUNESERVE_CPU_LORA_OPS=vllm")


def test_unknown_setting_is_named(monkeypatch):
    monkeypatch.setenv(plugin.OPS_ENV, "fast")
    path, why = plugin.lora_ops_path()
    assert path == plugin.VLLM_OWN and "'fast'" in why


def test_refuses_another_vllm_version(monkeypatch):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.33.0")
    path, why = plugin.lora_ops_path()
    assert path == plugin.VLLM_OWN and "0.33.0" in why and "0.32.0" in why


def _in_fresh_process(code: str, **env: str) -> dict:
    """Run ``code`` (which prints one JSON line last) in a new interpreter: register()
    patches vLLM classes process-wide, which must not leak into the test process."""
    import os

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=300, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


REGISTER_TWICE = """
import json
from service.vllm_plugin import register
from vllm.platforms import current_platform
from vllm.lora.model_manager import LoRAModelManager
register()
first = (type(current_platform).check_and_update_config, LoRAModelManager.activate_adapter)
register()
second = (type(current_platform).check_and_update_config, LoRAModelManager.activate_adapter)
print(json.dumps({"wrapper": current_platform.get_punica_wrapper(),
                  "idempotent": first == second}))
"""


def test_register_patches_once_per_process():
    out = _in_fresh_process(REGISTER_TWICE, TUNESERVE_CPU_LORA_COMPILE="1")
    assert out == {"wrapper": plugin.WRAPPER_QUALNAME, "idempotent": True}


def test_register_leaves_vllm_alone_when_switched_off():
    out = _in_fresh_process(REGISTER_TWICE, TUNESERVE_CPU_LORA_OPS="vllm")
    assert out["wrapper"] == "vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU"


PLATFORM_HOOK = """
import json
from service.vllm_plugin import register
from vllm.platforms import current_platform
register()
hook = type(current_platform).check_and_update_config.__func__
print(json.dumps({"hook": hook.__name__}))
"""


def test_compile_setting_wraps_the_platform_hook_only_when_asked():
    """vLLM's CPU hook switches compilation off when LoRA is on; the wrapper that hides
    LoRA from it is installed with TUNESERVE_CPU_LORA_COMPILE=1 and only then."""
    assert _in_fresh_process(PLATFORM_HOOK, TUNESERVE_CPU_LORA_COMPILE="1") == {
        "hook": "check_with_lora_hidden"}
    assert _in_fresh_process(PLATFORM_HOOK) == {"hook": "check_and_update_config"}
