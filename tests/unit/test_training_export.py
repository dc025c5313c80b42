"""`tuneserve export NAME --merge OUT` on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from training.config import config_from_dict
from training.sft import train
from tuneserve.cli import main


@pytest.fixture
def tiny_adapter(tiny_model_dir, tmp_path, isolated_home):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"list containers {i}", "completion": "docker ps"}) + "\n"
            for i in range(8)
        )
    )
    config = config_from_dict(
        {
            "base_model": str(tiny_model_dir),
            "name": "exp",
            "datasets": [{"path": str(data)}],
            "max_steps": 3,
            "micro_batch_size": 4,
            "learning_rate": 1e-2,
        }
    )
    return train(config)  # into $TUNESERVE_HOME/adapters/exp


def test_export_merge_writes_a_plain_model_equal_to_base_plus_adapter(
    tiny_adapter, tiny_model_dir, tmp_path, capsys
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert main(["export", "exp", "--merge", str(out)]) == 0  # by name, from $TUNESERVE_HOME
    assert capsys.readouterr().out.strip() == f"merged model written to {out}"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("<bos>list containers", add_special_tokens=False, return_tensors="pt")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(**ids).logits
        peft_logits = PeftModel.from_pretrained(base, tiny_adapter)(**ids).logits
        merged_logits = merged(**ids).logits
    assert torch.allclose(merged_logits, peft_logits, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-4)

    assert main(["export", "exp", "--merge", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(tiny_adapter), "--merge", str(out), "--force"]) == 0


def test_export_unknown_adapter_is_one_line_error(isolated_home, tmp_path, capsys):
    assert main(["export", "nope", "--merge", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: no adapter named 'nope'")
