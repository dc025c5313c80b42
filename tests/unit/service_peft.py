"""Make real PEFT adapters of the methods vLLM cannot serve, for serving tests without
training: PEFT's own configs, trainable weights perturbed so they change the outputs."""

from __future__ import annotations

from pathlib import Path

# method -> what get_peft_model gets (task_type CAUSAL_LM added).
METHODS = ("prompt_tuning", "prefix_tuning", "ia3", "vera", "dora", "adalora")


def peft_config(method: str):
    from peft import (
        AdaLoraConfig,
        IA3Config,
        LoraConfig,
        PrefixTuningConfig,
        PromptTuningConfig,
        VeraConfig,
    )

    if method == "prompt_tuning":
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    if method == "prefix_tuning":
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    if method == "ia3":
        return IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "v_proj", "down_proj"],
                         feedforward_modules=["down_proj"])
    if method == "vera":
        return VeraConfig(task_type="CAUSAL_LM", r=8, target_modules=["q_proj", "o_proj"])
    if method == "dora":
        return LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"],
                          use_dora=True, init_lora_weights=False)
    if method == "adalora":
        return AdaLoraConfig(task_type="CAUSAL_LM", init_r=4, target_r=2, total_step=10,
                             target_modules=["q_proj", "v_proj"])
    raise ValueError(method)


def make_peft_adapter(model_dir: Path, out_dir: Path, method: str, *, seed: int = 0,
                      scale: float = 0.5) -> Path:
    """An adapter of ``method`` for ``model_dir``, saved as safetensors into ``out_dir``."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, peft_config(method))
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * scale * (param.abs().mean() + 0.1))
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def make_full_finetune(model_dir: Path, out_dir: Path, *, seed: int = 0) -> Path:
    """A "full fine-tune" of ``model_dir``: every weight perturbed, saved as a checkpoint
    with the base's tokenizer (what training writes for ``adapter: full``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2 * (param.abs().mean() + 0.01))
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    return Path(out_dir)


def peft_greedy(model_dir: Path, adapter_dir: Path, prompt_ids: list[int], max_new_tokens: int,
                eos_token_id: list[int]) -> list[int]:
    """PEFT's own greedy ``generate`` on a fresh base: the reference tokens (for a full
    fine-tune, transformers' on the checkpoint itself)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(adapter_dir, dtype=torch.float32).eval()
    else:
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos_token_id, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()
