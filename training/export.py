"""``tuneserve export NAME --merge OUT``: the base model with an adapter merged in.

The result is a plain Hugging Face checkpoint (safetensors + tokenizer) that needs neither
PEFT nor tuneserve to load. Written to a temp folder and renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneserve.errors import UserError
from tuneserve.home import adapters_dir


def resolve_adapter(name_or_path: str) -> Path:
    """An adapter folder: an existing path, or a name under ``$TUNESERVE_HOME/adapters``."""
    path = Path(name_or_path)
    if not path.is_dir():
        path = adapters_dir() / name_or_path
    if not (path / "adapter_config.json").is_file():
        raise UserError(
            f"no adapter named {name_or_path!r} (looked for {path}/adapter_config.json)"
        )
    return path


def export_merged(name_or_path: str, out: Path, *, force: bool = False) -> Path:
    """Merge the adapter into a full-precision copy of its base; write it to ``out``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.base_models import resolve_model_path
    from training.manifest import read_manifest, staging_dir

    adapter = resolve_adapter(name_or_path)
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} already exists (use --force to replace it)")
    manifest = read_manifest(adapter)
    base = manifest.get("base_model_path") or manifest.get("base_model")
    if not base or not Path(base).is_dir():
        base = manifest.get("base_model") or json.loads(
            (adapter / "adapter_config.json").read_text()
        ).get("base_model_name_or_path")
    if not base:
        raise UserError(f"adapter {adapter} does not say which base model it belongs to")
    base_path = resolve_model_path(base)
    # Always merge into full-precision weights, also for QLoRA adapters (merging into
    # 4-bit weights would round the update away).
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    with staging_dir(out, overwrite=force) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "tuneserve_export.json").write_text(
            json.dumps(
                {"adapter": str(adapter), "base_model": str(base), "manifest": manifest}, indent=2
            )
            + "\n"
        )
    return out
