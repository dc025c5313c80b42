"""Axolotl's own Gemma 3 270M QLoRA example config, with a ShareGPT dataset, trains the real
model for a few steps; the adapter is then served and chatted with through the openai SDK."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from training.config import load_config
from training.data import load_rows
from training.manifest import read_manifest
from training.sft import train

pytestmark = pytest.mark.slow

EXAMPLE = (
    Path(__file__).resolve().parents[1] / "unit" / "axolotl_configs" / "gemma-3-270m-qlora.yml"
)


def test_axolotl_qlora_sharegpt_trains_serves_and_chats(
    live_server, real_model_dir, shared_data, tmp_path
):
    shutil.copy(EXAMPLE, tmp_path)
    rows = load_rows(shared_data / "dockerNLcommands.json").rows[:16]
    with (tmp_path / "sharegpt.jsonl").open("w") as fh:
        for row in rows:
            turns = [
                {"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
                for m in row["messages"]
            ]
            fh.write(json.dumps({"conversations": turns}) + "\n")
    # Unchanged but for the local model, a few steps (one step = 4 rows here) and lora_r:
    # the shared test server serves ranks up to 16 (its --max-lora-rank), the example's is 32.
    config = load_config(
        tmp_path / EXAMPLE.name,
        [f"base_model={real_model_dir}", "max_steps=3", "lora_r=16"],
    )
    assert config.adapter == "qlora" and config.datasets[0].type == "chat_template"
    adapter = train(config, progress_bar=False)
    manifest = read_manifest(adapter)
    assert manifest["steps"] == 3 and manifest["adapter"] == "qlora"
    assert adapter == tmp_path / "outputs" / "out"

    live_server.register_adapter(adapter, "axolotl-qlora")
    try:
        client = live_server.openai()
        reply = client.chat.completions.create(
            model="axolotl-qlora",
            messages=rows[0]["messages"][:-1],
            max_tokens=24,
            temperature=0,
        )
        assert reply.model == "axolotl-qlora"
        assert reply.choices[0].message.content.strip()
        assert reply.usage.completion_tokens > 0
    finally:
        live_server.unregister_adapter("axolotl-qlora")
