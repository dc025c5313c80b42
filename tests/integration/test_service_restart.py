"""The adapter registry survives a restart: a second ``tuneserve serve`` on the same
``$TUNESERVE_HOME`` serves again what the first one served (real vLLM, tiny model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import start_server, stop_server
from tests.unit.service_lora import make_lora_adapter

pytestmark = pytest.mark.slow


def test_adapters_reloaded_after_restart(tiny_model_dir, tmp_path):
    adapter = make_lora_adapter(Path(tiny_model_dir), tmp_path / "src" / "kept")
    doomed = make_lora_adapter(Path(tiny_model_dir), tmp_path / "src" / "doomed", seed=1)
    server = start_server(Path(tiny_model_dir), "tiny-gemma", tmp_path / "run")
    try:
        server.register_adapter(adapter, "kept")
        server.register_adapter(doomed, "doomed")
        before = server.openai().completions.create(model="kept", prompt="docker",
                                                    max_tokens=8, temperature=0)
    finally:
        stop_server(server)
    shutil.rmtree(doomed)  # gone while the server was down: dropped with a log line

    server = start_server(Path(tiny_model_dir), "tiny-gemma", tmp_path / "run")
    try:
        client = server.openai()
        assert {m.id for m in client.models.list().data} == {"tiny-gemma", "kept"}
        after = client.completions.create(model="kept", prompt="docker", max_tokens=8,
                                          temperature=0)
        assert after.choices[0].text == before.choices[0].text
        assert "doomed" in server.log_tail(400) and "not restored" in server.log_tail(400)
    finally:
        stop_server(server)
