"""`tuneserve train` on the tiny model: every adapter flavour, manifest, log, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from training.callbacks import CancelCallback
from training.config import config_from_dict
from training.manifest import read_held_out, read_manifest
from training.sft import TrainingCancelled, train
from tuneserve.cli import main
from tuneserve.errors import UserError

DOCKER_ROWS = [
    ("List all running containers.", "docker ps"),
    ("Show every container, stopped ones too.", "docker ps -a"),
    ("List the images.", "docker images"),
    ("Stop the container named web.", "docker stop web"),
    ("Run nginx in the background on port 8080.", "docker run -d -p 8080:80 nginx"),
    ("Show exited containers.", "docker ps -a --filter status=exited"),
]


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    with path.open("w") as fh:
        for i in range(4):
            for request, command in DOCKER_ROWS:
                fh.write(
                    json.dumps(
                        {"instruction": "translate", "input": f"{request} ({i})", "output": command}
                    )
                    + "\n"
                )
    return path


def make_config(tiny_model_dir, data_file, tmp_path, **overrides):
    raw = {
        "base_model": str(tiny_model_dir),
        "name": "tiny",
        "output_dir": str(tmp_path / "adapters"),
        "datasets": [{"path": str(data_file)}],
        "val_set_size": 4,
        "max_steps": 4,
        "micro_batch_size": 4,
        "learning_rate": 5e-3,
        "logging_steps": 1,
        "save_steps": 2,
        "lora_r": 8,
        "lora_alpha": 16,
        "sequence_len": 96,
    }
    raw.update(overrides)
    return config_from_dict(raw)


def _logits(model, tokenizer):
    ids = tokenizer("<bos>List the images.", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def assert_trained_adapter_works(adapter: Path, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b, "no LoRA B matrices saved"
    # LoRA B starts at zero: non-zero B means the trainable weights changed.
    assert any(t.abs().sum() > 0 for t in lora_b)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    base_logits = _logits(base, tokenizer)
    tuned = PeftModel.from_pretrained(base, adapter)  # plain PEFT, no tuneserve code
    assert not torch.allclose(base_logits, _logits(tuned, tokenizer), atol=1e-5)


class TrainingProbe(TrainerCallback):
    """What the trainer actually trains with, seen when training begins: every LoRA layer
    (with the layer it wraps) and the optimiser's parameter groups (name, learning rate)."""

    def on_train_begin(self, args, state, control, *, model, optimizer, **kwargs):
        from peft.tuners.lora import LoraLayer

        self.lora_layers = {
            name: (type(module), type(module.get_base_layer()))
            for name, module in model.named_modules()
            if isinstance(module, LoraLayer)
        }
        names = {id(p): n for n, p in model.named_parameters()}
        # initial_lr: the group's rate before the scheduler scales it.
        self.param_groups = [
            (group["initial_lr"], [names[id(p)] for p in group["params"]])
            for group in optimizer.param_groups
            if group["params"]
        ]


def assert_flavour_applied(probe: TrainingProbe, flavour: dict, lr: float) -> None:
    """The flag reached the model and the optimiser (a run with it ignored fails here)."""
    import bitsandbytes as bnb
    from peft.tuners.lora import bnb as peft_bnb

    assert probe.lora_layers, "no LoRA layers"
    wrapped = {base for _, base in probe.lora_layers.values()}
    if flavour.get("adapter") == "qlora":
        # Every LoRA layer sits on a 4-bit NF4 base layer, through PEFT's bnb LoRA layer.
        assert wrapped == {bnb.nn.Linear4bit}, wrapped
        assert {kind for kind, _ in probe.lora_layers.values()} == {peft_bnb.Linear4bit}
    else:
        assert bnb.nn.Linear4bit not in wrapped
    lora_params = [n for _, names in probe.param_groups for n in names if "lora_" in n]
    assert lora_params
    rates = {n: rate for rate, names in probe.param_groups for n in names}
    ratio = flavour.get("loraplus_lr_ratio")
    for name in lora_params:
        # LoRA+: B matrices learn `ratio` times faster than A; plain LoRA: one rate.
        expected = lr * ratio if ratio and "lora_B" in name else lr
        assert rates[name] == pytest.approx(expected), name
    if ratio:
        assert any("lora_B" in n for n in lora_params) and any("lora_A" in n for n in lora_params)


@pytest.mark.parametrize(
    "flavour",
    [
        {},
        {"adapter": "qlora"},
        {"use_dora": True},
        {"use_rslora": True},
        {"loraplus_lr_ratio": 16.0},
    ],
    ids=["lora", "qlora", "dora", "rslora", "loraplus"],
)
def test_each_adapter_flavour_trains_and_loads_with_peft(
    tiny_model_dir, data_file, tmp_path, flavour
):
    config = make_config(tiny_model_dir, data_file, tmp_path, **flavour)
    probe = TrainingProbe()
    adapter = train(config, callbacks=[probe])
    assert adapter == tmp_path / "adapters" / "tiny"
    assert_flavour_applied(probe, flavour, config.learning_rate)
    assert_trained_adapter_works(adapter, tiny_model_dir)
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["use_dora"] is bool(flavour.get("use_dora"))
    assert adapter_config["use_rslora"] is bool(flavour.get("use_rslora"))
    manifest = read_manifest(adapter)
    assert manifest["adapter"] == config.adapter
    assert manifest["servable_by_vllm"] is not bool(flavour.get("use_dora"))


def test_manifest_log_and_held_out_split(tiny_model_dir, data_file, tmp_path):
    from training.data import load_rows, split_rows

    config = make_config(tiny_model_dir, data_file, tmp_path, seed=3)
    adapter = train(config)
    manifest = read_manifest(adapter)
    assert manifest["base_model"] == str(tiny_model_dir)
    assert len(manifest["base_checkpoint_sha256"]) == 64
    assert manifest["config"]["seed"] == 3 and manifest["config"]["name"] == "tiny"
    (dataset,) = manifest["datasets"]
    assert dataset["rows"] == 24 and dataset["type"] == "alpaca" and len(dataset["sha256"]) == 64
    assert manifest["split"]["train_rows"] == 20 and manifest["split"]["held_out_rows"] == 4
    assert manifest["steps"] == 4 and manifest["trained_tokens"] > 0
    assert manifest["tokens_per_s"] > 0 and manifest["peak_memory_mb"] > 0
    assert len(manifest["loss_curve"]) == 4 and "eval_loss" in manifest["metrics"]
    assert {"torch", "transformers", "peft", "trl"} <= set(manifest["libraries"])
    # The held-out rows beside the adapter are exactly split_rows() of the data file.
    _, held = split_rows(load_rows(data_file).rows, 4, 3)
    assert read_held_out(adapter) == held
    assert manifest["split"]["held_out_indices"] == sorted(manifest["split"]["held_out_indices"])
    # Every training row is fingerprinted beside the adapter; no held-out row is among them.
    from training.manifest import read_train_fingerprints, row_fingerprint

    trained = read_train_fingerprints(adapter)
    assert len(trained) == 20
    assert not {row_fingerprint(r["messages"]) for r in held} & trained

    events = [
        json.loads(x) for x in (tmp_path / "adapters" / "tiny.train.jsonl").read_text().splitlines()
    ]
    types = [e["type"] for e in events]
    assert types[0] == "status" and types[-1] == "done"
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4]
    assert all(
        e["total_steps"] == 4 and e["loss"] > 0 and e["trained_tokens"] > 0 for e in progress
    )
    assert "eval" in types and events[-1]["message"] == str(adapter)
    # No leftovers: no temp folders, no checkpoints once the adapter is written.
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir() if p.name.startswith(".")) in (
        [],
        [".checkpoints"],
    )
    assert not (tmp_path / "adapters" / ".checkpoints" / "tiny").exists()


def test_cancelled_run_leaves_no_adapter(tiny_model_dir, data_file, tmp_path):
    cancel = CancelCallback()

    class CancelAtStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                cancel.cancel("test")

    config = make_config(tiny_model_dir, data_file, tmp_path, max_steps=50)
    with pytest.raises(TrainingCancelled):
        train(config, callbacks=[CancelAtStep2()], cancel=cancel)
    root = tmp_path / "adapters"
    assert not (root / "tiny").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".tiny")]
    events = [json.loads(x) for x in (root / "tiny.train.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "error" and "cancelled" in events[-1]["message"]
    assert max(e.get("step", 0) for e in events) <= 3


def test_existing_adapter_is_not_overwritten(tiny_model_dir, data_file, tmp_path):
    config = make_config(tiny_model_dir, data_file, tmp_path, max_steps=1)
    train(config)
    with pytest.raises(UserError, match="already exists"):
        train(config)
    train(make_config(tiny_model_dir, data_file, tmp_path, max_steps=1, overwrite=True))


def test_invalid_rows_refuse_to_start_unless_dropped(tiny_model_dir, data_file, tmp_path):
    text = data_file.read_text().splitlines()
    text[2] = json.dumps({"instruction": "translate", "input": "x"})
    text[5] = "{oops"
    data_file.write_text("\n".join(text) + "\n")
    config = make_config(tiny_model_dir, data_file, tmp_path, max_steps=1)
    with pytest.raises(UserError) as info:
        train(config)
    message = str(info.value)
    assert "line 3: missing or non-string 'output'" in message and "line 6: invalid JSON" in message
    assert not (tmp_path / "adapters" / "tiny").exists()
    adapter = train(
        make_config(tiny_model_dir, data_file, tmp_path, max_steps=1, drop_invalid_rows=True)
    )
    assert read_manifest(adapter)["datasets"][0]["invalid_rows"] == 2


def test_cli_train_prints_summary_and_errors_are_one_line(
    tiny_model_dir, data_file, tmp_path, capsys
):
    config_path = tmp_path / "c.yaml"
    config_path.write_text(
        f"base_model: {tiny_model_dir}\nname: cli\noutput_dir: {tmp_path / 'out'}\n"
        f"datasets: [{{path: {data_file}}}]\nmicro_batch_size: 4\n"
    )
    log_file = tmp_path / "log.jsonl"
    assert (
        main(["train", str(config_path), "--set", "max_steps=2", "--log-file", str(log_file)]) == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert (
        out[-1].startswith("adapter cli written to ") and str(tmp_path / "out" / "cli") in out[-1]
    )
    assert json.loads(log_file.read_text().splitlines()[-1])["type"] == "done"

    assert main(["train", str(config_path), "--set", "lora_rank=4"]) == 2
    assert (
        capsys.readouterr().err.strip() == "error: invalid training config: unknown key 'lora_rank'"
    )
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["train", str(config_path), "--set", "base_model=no-such-model"]) == 2
    assert "unknown base model 'no-such-model'" in capsys.readouterr().err


def test_unprepared_base_model_says_how_to_fix(data_file, tmp_path, isolated_home):
    config = config_from_dict(
        {"name": "x", "datasets": [{"path": str(data_file)}], "output_dir": str(tmp_path / "o")}
    )
    with pytest.raises(UserError, match="tuneserve models prepare gemma-3-270m"):
        train(config)


def test_val_datasets_are_the_held_out_set(tiny_model_dir, data_file, tmp_path):
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"prompt": "List the images.", "completion": "docker images"}) + "\n")
    config = make_config(
        tiny_model_dir,
        data_file,
        tmp_path,
        max_steps=1,
        val_set_size=0,
        val_datasets=[{"path": str(val)}],
    )
    adapter = train(config)
    manifest = read_manifest(adapter)
    assert manifest["split"]["train_rows"] == 24 and manifest["split"]["held_out_rows"] == 1
    assert manifest["datasets"][1]["role"] == "validation"
    assert read_held_out(adapter)[0]["messages"][-1]["content"] == "docker images"
    assert "eval_loss" in manifest["metrics"]
    with pytest.raises(Exception, match="either val_set_size or val_datasets"):
        make_config(tiny_model_dir, data_file, tmp_path, val_datasets=[{"path": str(val)}])


def test_sample_packing_trains(tiny_model_dir, data_file, tmp_path):
    config = make_config(tiny_model_dir, data_file, tmp_path, sample_packing=True, max_steps=2)
    assert_trained_adapter_works(train(config), tiny_model_dir)


def test_held_out_rows_never_copy_a_training_row(tiny_model_dir, tmp_path):
    """A dataset with duplicates: a held-out row that also appears in training is left out of
    the held-out set (and counted), so evaluation never scores a trained-on row."""
    from transformers import AutoTokenizer

    from training.data import prepare_data

    path = tmp_path / "dupes.jsonl"
    rows = [{"instruction": "translate", "input": request, "output": command}
            for request, command in DOCKER_ROWS] * 2  # every row twice
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = make_config(tiny_model_dir, path, tmp_path, val_set_size=4, seed=0)
    data = prepare_data(config, AutoTokenizer.from_pretrained(tiny_model_dir))
    held_keys = {json.dumps(r["messages"]) for r in data.held_out}
    assert not held_keys & {json.dumps(r["messages"]) for r in data.train}
    assert len(data.held_out) + data.held_out_duplicates == 4 and data.held_out_duplicates > 0
