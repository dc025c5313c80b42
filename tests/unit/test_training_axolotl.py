"""Axolotl configs as users bring them: every key honoured, warned about or refused.

``axolotl_configs/`` holds configs in the shapes of Axolotl's documented examples
(gemma-3-270m-qlora verbatim but for local paths); each trains 2 steps on the tiny model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from training.config import config_from_dict, load_config
from training.manifest import read_manifest
from training.sft import train
from tuneserve.errors import UserError

EXAMPLES = Path(__file__).with_name("axolotl_configs")
ROWS = [
    ("List all running containers.", "docker ps"),
    ("Show every container, stopped ones too.", "docker ps -a"),
    ("List the images.", "docker images"),
    ("Stop the container named web.", "docker stop web"),
]


def _data(folder: Path) -> None:
    """The local datasets the example configs name, in their formats."""
    with (folder / "sharegpt.jsonl").open("w") as fh:
        for i in range(3):
            for q, a in ROWS:
                turns = [
                    {"from": "human", "value": f"{q} ({i})"},
                    {"from": "gpt", "value": a},
                    {"from": "human", "value": "Once more."},
                    {"from": "gpt", "value": a},
                ]
                fh.write(json.dumps({"conversations": turns}) + "\n")
    with (folder / "alpaca.jsonl").open("w") as fh:
        for i in range(3):
            for q, a in ROWS:
                fh.write(
                    json.dumps({"instruction": "translate", "input": f"{q} ({i})", "output": a})
                    + "\n"
                )
    with (folder / "messages.jsonl").open("w") as fh:
        for i in range(5):
            for q, a in ROWS:
                msgs = [
                    {"role": "user", "content": f"{q} ({i})"},
                    {"role": "assistant", "content": a},
                ]
                fh.write(json.dumps({"messages": msgs}) + "\n")


@pytest.fixture
def example_dir(tmp_path) -> Path:
    for path in EXAMPLES.glob("*.yml"):
        shutil.copy(path, tmp_path)
    _data(tmp_path)
    return tmp_path


def test_axolotl_gemma_270m_qlora_example_loads_as_is(example_dir):
    config = load_config(example_dir / "gemma-3-270m-qlora.yml")
    # Honoured: name from output_dir, 4-bit base, every linear layer, the optimizer...
    assert config.name == "out" and config.adapter_path == example_dir / "outputs" / "out"
    assert config.adapter == "qlora" and config.lora_target_modules == "all-linear"
    assert config.optimizer == "adamw_bnb_8bit" and config.dtype == "float32"  # bf16 auto, CPU
    assert config.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert config.resume_from_checkpoint is False and config.saves_per_epoch == 1
    spec = config.datasets[0]
    assert spec.type == "chat_template" and spec.field_messages == "conversations"
    # Meaningless here: one warning line each, naming the key.
    warned = sorted(note.split(" ")[0] for note in config.notes)
    assert warned == [
        "ddp_find_unused_parameters",
        "flash_attention",
        "tf32",
        "unfrozen_parameters",
    ]


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yml")))
def test_axolotl_shaped_example_trains_two_steps(example_dir, tiny_model_dir, name):
    config = load_config(example_dir / name, [f"base_model={tiny_model_dir}", "max_steps=2"])
    adapter = train(config, progress_bar=False)
    manifest = read_manifest(adapter)
    assert manifest["steps"] == 2 and (adapter / "adapter_model.safetensors").is_file()
    assert adapter.parent == example_dir / "outputs"  # output_dir is the adapter folder


def _base(**extra):
    return {"name": "a", "datasets": [{"path": "d.jsonl"}], **extra}


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ({"load_in_4bit": True}, lambda c: c.adapter == "qlora"),
        ({"adapter": "qlora"}, lambda c: c.load_in_4bit),
        ({"load_in_8bit": True}, lambda c: c.load_in_8bit and c.adapter == "lora"),
        (
            {"lora_target_modules": ["q_proj"], "lora_target_linear": True},
            lambda c: c.lora_target_modules == "all-linear",
        ),
        ({"optimizer": "paged_adamw_8bit"}, lambda c: c.optimizer == "paged_adamw_8bit"),
        ({"optimizer": "sgd"}, lambda c: c.optimizer == "sgd"),
        ({"bf16": True}, lambda c: c.dtype == "bfloat16"),
        ({"bf16": False}, lambda c: c.dtype == "float32"),
        ({"resume_from_checkpoint": ""}, lambda c: c.resume_from_checkpoint is False),
        ({"resume_from_checkpoint": True}, lambda c: c.resume_from_checkpoint is True),
        (
            {"resume_from_checkpoint": "/ckpt/checkpoint-4"},
            lambda c: c.resume_from_checkpoint == "/ckpt/checkpoint-4",
        ),
        ({"peft_use_dora": True}, lambda c: c.use_dora),
        ({"special_tokens": {"pad_token": "<pad>"}}, lambda c: c.special_tokens["pad_token"]),
        (
            {"name": None, "output_dir": "/x/outputs/my-run"},
            lambda c: c.name == "my-run" and str(c.adapter_path) == "/x/outputs/my-run",
        ),
        (
            {"wandb_project": None, "wandb_entity": None, "evals_per_epoch": None},
            lambda c: not c.notes and not c.report_to,
        ),
    ],
)
def test_honoured_axolotl_keys(extra, check):
    assert check(config_from_dict(_base(**extra)))


@pytest.mark.parametrize(
    "key",
    [
        "flash_attention",
        "tf32",
        "ddp_find_unused_parameters",
        "ddp_timeout",
        "unfrozen_parameters",
        "dataset_prepared_path",
        "sample_packing_eff_est",
    ][:-1],
)
def test_meaningless_keys_warn_once(key):
    config = config_from_dict(_base(**{key: True}))
    assert len(config.notes) == 1 and config.notes[0].startswith(f"{key} is ignored: ")
    assert not config_from_dict(_base(**{key: False})).notes  # off is off here too


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"wandb_project": "p"}, "wandb is not installed"),
        ({"report_to": "tensorboard"}, "tensorboard is not installed"),
        ({"deepspeed": "ds.json"}, "DeepSpeed"),
        ({"fp16": True}, "float16"),
        ({"hub_model_id": "me/x"}, "nothing is uploaded"),
        ({"chat_template": "chatml"}, "base model's own template"),
        ({"load_in_4bit": True, "load_in_8bit": True}, "not both"),
        ({"rl": "kto"}, "rl: Input should be 'dpo' or 'orpo'"),
        ({"optimizer": "lion"}, "optimizer"),
        ({"name": None}, "name"),
    ],
)
def test_refused_axolotl_keys_name_the_reason(extra, reason):
    with pytest.raises(UserError, match=reason):
        config_from_dict(_base(**extra))


def test_every_refusal_is_reported_at_once():
    with pytest.raises(UserError) as err:
        config_from_dict(_base(deepspeed="x", fsdp=["full_shard"], lora_rank=3))
    assert all(k in str(err.value) for k in ("deepspeed", "fsdp", "lora_rank"))


def test_special_token_outside_the_vocabulary_is_refused(tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    _data(tmp_path)
    config = config_from_dict(
        {
            "name": "a",
            "base_model": str(tiny_model_dir),
            "output_dir": str(tmp_path / "o"),
            "datasets": [{"path": str(data.with_name("alpaca.jsonl"))}],
            "special_tokens": {"pad_token": "<|end_of_text|>"},
            "max_steps": 1,
        }
    )
    with pytest.raises(UserError, match="not in the base model's vocabulary"):
        train(config, progress_bar=False)


@pytest.mark.parametrize("dedupe", [False, True])
def test_duplicates_are_counted_or_dropped_and_work_estimated(tiny_model_dir, tmp_path, dedupe):
    _data(tmp_path)
    alpaca = tmp_path / "alpaca.jsonl"
    lines = alpaca.read_text().splitlines()
    alpaca.write_text("\n".join([*lines, lines[0], lines[1]]) + "\n")  # 12 rows + 2 repeats
    config = config_from_dict(
        {
            "name": "d",
            "base_model": str(tiny_model_dir),
            "output_dir": str(tmp_path / "o"),
            "datasets": [{"path": str(alpaca)}],
            "max_steps": 1,
            "micro_batch_size": 2,
            "dataset_exact_deduplication": dedupe,
        }
    )
    adapter = train(config, progress_bar=False)
    assert read_manifest(adapter)["split"]["train_rows"] == (12 if dedupe else 14)
    log = [
        json.loads(line)["message"]
        for line in (tmp_path / "o" / "d.train.jsonl").read_text().splitlines()
    ]
    data_line = next(m for m in log if m.startswith("data: "))
    assert "2 duplicate training rows " + ("dropped" if dedupe else "kept") in data_line
    assert any(m.startswith("estimate: 1 steps, ") and "tokens" in m for m in log)
