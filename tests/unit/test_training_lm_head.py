"""The compact LM head (training/lm_head.py, on by default) trains exactly as TRL's own loss.

Same tiny model, same seeded LoRA init, same batch through ``AdapterSFTTrainer.compute_loss``
with ``compact_lm_head`` on and off: the loss, every trainable gradient and the head's
outputs (its loss, the per-token values TRL's metrics read) must agree to float tolerance.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from training.config import config_from_dict
from training.data import prepare_data, tokenize_rows
from training.trainer import AdapterSFTTrainer, build_sft_config, load_model

ROWS = [
    ("List all running containers.", "docker ps"),
    ("Show every container, stopped ones too.", "docker ps -a"),
    ("Stop the container named web.", "docker stop web"),
    ("Run nginx in the background on port 8080.", "docker run -d -p 8080:80 nginx"),
]


def _loss_grads_outputs(tiny_model_dir, data_file, tmp_path, *, compact, softcap, num_items):
    from transformers import AutoTokenizer

    config = config_from_dict(
        {
            "base_model": str(tiny_model_dir),
            "name": "head",
            "output_dir": str(tmp_path / "adapters"),
            "datasets": [{"path": str(data_file)}],
            "val_set_size": 0,
            "micro_batch_size": 4,
            "sequence_len": 96,
            "compact_lm_head": compact,
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train_ds = tokenize_rows(prepare_data(config, tokenizer).train, tokenizer)
    model = load_model(config, tiny_model_dir)  # LoRA init seeded by config.seed
    with torch.no_grad():  # LoRA B starts at zero, which would leave every A gradient zero
        generator = torch.Generator().manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.get_base_model().config.final_logit_softcapping = softcap  # read when patched
    trainer = AdapterSFTTrainer(
        model=model,
        args=build_sft_config(config, has_eval=False),
        train_dataset=train_ds,
        processing_class=tokenizer,
        compact_lm_head=compact,
    )
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    labels = batch["labels"]
    # Prompt tokens and padding are masked, answers are not: the compact head's case.
    assert (labels == -100).any() and (labels != -100).any()
    model.train()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        out = model(**batch, fused_lm_head=True, num_items_in_batch=num_items)
    keys = ("loss", "log_probs", "entropy", "is_top1", "label_mask")
    fields = {k: getattr(out, k) for k in keys}
    return loss.detach(), grads, fields


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        "".join(
            json.dumps({"instruction": "translate", "input": q, "output": a}) + "\n"
            for q, a in ROWS
        )
    )
    return path


@pytest.mark.parametrize("softcap", [None, 5.0], ids=["no-softcap", "softcap"])
@pytest.mark.parametrize("num_items", [None, 37], ids=["mean", "num_items_in_batch"])
def test_compact_head_matches_trl_loss_and_gradients(
    tiny_model_dir, data_file, tmp_path, softcap, num_items
):
    kw = {"softcap": softcap, "num_items": num_items}
    ref_loss, ref_grads, ref_out = _loss_grads_outputs(
        tiny_model_dir, data_file, tmp_path, compact=False, **kw
    )
    loss, grads, out = _loss_grads_outputs(tiny_model_dir, data_file, tmp_path, compact=True, **kw)

    assert ref_loss > 0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and any("lora_A" in n for n in grads)
    for name, ref in ref_grads.items():
        assert ref.abs().sum() > 0, f"{name}: no gradient to compare"
        torch.testing.assert_close(grads[name], ref, rtol=1e-4, atol=1e-6, msg=name)
    # The output's own loss (what Trainer.compute_loss reads on TRL's sequence-parallel
    # path) and the per-token outputs behind TRL's logged entropy and token accuracy.
    torch.testing.assert_close(out["loss"], ref_out["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["label_mask"], ref_out["label_mask"])
    mask = ref_out["label_mask"]
    for key in ("log_probs", "entropy", "is_top1"):  # is_top1: bool in TRL, float here
        torch.testing.assert_close(
            out[key][mask].float(), ref_out[key][mask].float(), rtol=1e-4, atol=1e-5, msg=key
        )


def _trainer_and_batch(tiny_model_dir, data_file, tmp_path, setting=contextlib.nullcontext):
    """A compact-head trainer on the tiny model (LoRA B randomised so every LoRA tensor
    gets a gradient), built inside ``setting()``, and one training batch."""
    from transformers import AutoTokenizer

    config = config_from_dict(
        {
            "base_model": str(tiny_model_dir),
            "name": "head",
            "output_dir": str(tmp_path / "adapters"),
            "datasets": [{"path": str(data_file)}],
            "val_set_size": 0,
            "micro_batch_size": 4,
            "sequence_len": 96,
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train_ds = tokenize_rows(prepare_data(config, tokenizer).train, tokenizer)
    model = load_model(config, tiny_model_dir)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    with setting():
        trainer = AdapterSFTTrainer(
            model=model,
            args=build_sft_config(config, has_eval=False),
            train_dataset=train_ds,
            processing_class=tokenizer,
            compact_lm_head=True,
        )
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    return trainer, batch


def _is_compact(base_model) -> bool:
    # functools.wraps copies the name; the code object says whose forward it is.
    return base_model.forward.__func__.__code__.co_filename.endswith("training/lm_head.py")


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    named = trainer.model.named_parameters()
    return loss.detach(), {n: p.grad.clone() for n, p in named if p.requires_grad}


def test_compact_head_gathers_an_fsdp2_sharded_head(tiny_model_dir, data_file, tmp_path):
    """FSDP2 hands the head's weight over as a DTensor (sharded); the compact head gathers
    it and trains exactly as with the plain weight."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    trainer, batch = _trainer_and_batch(tiny_model_dir, data_file, tmp_path)
    base = trainer.model.get_base_model()
    assert _is_compact(base)
    trainer.model.train()
    ref_loss, ref_grads = _loss_and_grads(trainer, batch)

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        sharded = distribute_tensor(base.lm_head.weight.detach().clone(), mesh, [Shard(0)])
        base.lm_head.weight = torch.nn.Parameter(sharded, requires_grad=False)
        loss, grads = _loss_and_grads(trainer, batch)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and grads
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, rtol=1e-4, atol=1e-6, msg=name)


def test_compact_head_is_switched_off_under_zero3_with_one_log_line(
    tiny_model_dir, data_file, tmp_path, caplog
):
    """ZeRO-3 partitions the head's weight outside its forward: the compact head stays off
    (TRL's gathering head runs) and one log line says why."""
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import (
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    @contextlib.contextmanager
    def zero3():  # the global config transformers (and TRL) read; the model is loaded before
        config = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}})
        set_hf_deepspeed_config(config)
        try:
            yield
        finally:
            unset_hf_deepspeed_config()

    with caplog.at_level("WARNING", logger="training.trainer"):
        trainer, _ = _trainer_and_batch(tiny_model_dir, data_file, tmp_path, zero3)
    assert not _is_compact(trainer.model.get_base_model())
    lines = [r.getMessage() for r in caplog.records if r.name == "training.trainer"]
    assert len(lines) == 1 and "ZeRO-3" in lines[0] and "compact_lm_head is off" in lines[0]
