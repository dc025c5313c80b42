"""Make real PEFT LoRA adapters for serving tests without training."""

from __future__ import annotations

from pathlib import Path


def make_lora_adapter(model_dir: Path, out_dir: Path, *, r: int = 8, seed: int = 0,
                      target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
                      **config_kw) -> Path:
    """A PEFT LoRA adapter of ``model_dir`` with non-zero random weights, saved as
    safetensors into ``out_dir`` (no training: enough to change the model's outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=r, target_modules=list(target_modules),
                        init_lora_weights=False, **config_kw)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)
