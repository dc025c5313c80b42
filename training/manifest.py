"""The adapter folder and its manifest, written atomically.

``output_dir/NAME/`` holds ``adapter_model.safetensors``, ``adapter_config.json`` (for
``adapter: full``: ``model.safetensors``, ``config.json`` and the tokenizer instead),
``tuneserve.json`` (the manifest), ``held_out.jsonl`` (the held-out rows, so evaluation
scores exactly the rows training never saw) and ``train_rows.sha256`` (one fingerprint per
training row, so an evaluation can count exactly how many of its rows were trained on). Everything is written into a temporary
sibling folder and renamed into place last: a killed run never leaves a folder that looks
like an adapter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST_FILE = "tuneserve.json"
HELD_OUT_FILE = "held_out.jsonl"
TRAIN_FINGERPRINTS_FILE = "train_rows.sha256"
LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets", "bitsandbytes", "tuneserve")


def read_manifest(adapter_dir: str | Path) -> dict[str, Any]:
    """The manifest of an adapter folder (``{}`` when it has none)."""
    path = Path(adapter_dir) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """The manifest's identity in reports: sha256 of its canonical JSON, so an adapter read
    from its folder and one described by a remote server's API get the same digest."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def update_manifest(adapter_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into an adapter's manifest (atomic file replace); return it."""
    manifest = read_manifest(adapter_dir)
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(manifest.get(key), dict):
            manifest[key] = {**manifest[key], **value}
        else:
            manifest[key] = value
    _write_json(Path(adapter_dir) / MANIFEST_FILE, manifest)
    return manifest


def read_held_out(adapter_dir: str | Path) -> list[dict]:
    """The held-out rows (``{"messages": [...]}``) saved beside an adapter."""
    path = Path(adapter_dir) / HELD_OUT_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def row_fingerprint(messages: list[dict[str, Any]]) -> str:
    """A row's identity for contamination checks: its user/assistant/tool turns (system
    prompts differ between a training config and a suite, the exchange does not)."""
    turns = [(m.get("role"), m.get("content")) for m in messages if m.get("role") != "system"]
    return hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode()).hexdigest()[:32]


def row_key(row: dict[str, Any]) -> str:
    """:func:`row_fingerprint` of any row shape (raw text and segment rows: their JSON)."""
    if "messages" in row:
        return row_fingerprint(row["messages"])
    text = json.dumps(row, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_train_fingerprints(adapter_dir: str | Path) -> set[str] | None:
    """Fingerprints of the rows an adapter trained on (None when it did not record them)."""
    path = Path(adapter_dir) / TRAIN_FINGERPRINTS_FILE
    if not path.is_file():
        return None
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@contextmanager
def staging_dir(target: Path, *, overwrite: bool):
    """Yield a temp folder beside ``target``; on clean exit rename it to ``target``.

    On any exception (or a cancelled run) the temp folder is removed and ``target`` is
    left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
    try:
        yield tmp
        publish(tmp, target, overwrite=overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, target: Path, *, overwrite: bool) -> None:
    """Rename ``tmp`` to ``target`` (an existing target is replaced only with overwrite)."""
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target} already exists")
        trash = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(trash)
        tmp.rename(target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(target)


def write_adapter_files(
    tmp: Path,
    save_adapter: Callable[[Path], None],
    manifest: dict[str, Any],
    held_out: list[dict],
    train_rows: list[dict],
) -> None:
    """Fill a staging folder: PEFT files, held-out rows, training-row fingerprints, and the
    manifest (written last)."""
    save_adapter(tmp)
    with (tmp / HELD_OUT_FILE).open("w", encoding="utf-8") as fh:
        for row in held_out:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    fingerprints = sorted({row_key(row) for row in train_rows})
    (tmp / TRAIN_FINGERPRINTS_FILE).write_text("".join(f + "\n" for f in fingerprints))
    _write_json(tmp / MANIFEST_FILE, manifest)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def base_checkpoint_hash(model_path: Path) -> str | None:
    """The prepared model's recorded weights hash, else sha256 of its safetensors."""
    from training.base_models import PREPARED_MARKER
    from training.data import file_sha256

    marker = model_path / PREPARED_MARKER
    if marker.is_file():
        recorded = json.loads(marker.read_text()).get("weights_sha256")
        if recorded:
            return recorded
    weights = sorted(model_path.glob("*.safetensors"))
    return file_sha256(weights[0]) if len(weights) == 1 else None


# Methods whose result vLLM's LoRA path serves: LoRA A/B weights (LoRA-FA trains plain
# LoRA with another optimiser), DoRA excepted.
VLLM_SERVABLE = ("lora", "qlora", "lora_fa")


def method_fields(config) -> dict[str, Any]:
    """How an adapter was trained, for routing by the server: ``method`` (the adapter
    method, e.g. ``lora``, ``dora``, ``vera``, ``prompt_tuning``, ``full``), ``training``
    (``sft``, ``dpo`` or ``orpo``) and ``servable_by_vllm``."""
    method = config.adapter
    if method in ("lora", "qlora") and config.use_dora:
        method = "dora"
    return {
        "method": method,
        "training": config.rl or "sft",
        "servable_by_vllm": config.adapter in VLLM_SERVABLE and not config.use_dora,
    }


def build_manifest(
    config,
    *,
    model_path: Path,
    data,
    trainer,
    jsonl,
    metrics: dict[str, Any],
    resume: str | None,
    train_seconds: float,
    wall_seconds: float,
    trained_tokens: int,
    peak_memory_mb: float,
    created_at: str,
) -> dict[str, Any]:
    """The ``tuneserve.json`` of a finished run: config, data, split, numbers, versions."""
    import sys

    from training.trainer import count_parameters

    state = trainer.state
    trainable, total = count_parameters(trainer.model)
    return {
        "name": config.name,
        "kind": "full" if config.adapter == "full" else "adapter",
        "adapter": config.adapter,
        **method_fields(config),
        "base_model": config.base_model,
        "base_model_path": str(model_path),
        "base_checkpoint_sha256": base_checkpoint_hash(model_path),
        "config": config.model_dump(mode="json"),
        "datasets": data.datasets,
        "split": {
            "seed": config.seed,
            "val_set_size": config.val_set_size,
            "train_rows": len(data.train),
            "held_out_rows": len(data.held_out),
            "held_out_indices": data.held_out_indices,
            "held_out_duplicates_dropped": data.held_out_duplicates,
            "held_out_file": "held_out.jsonl (held_out_indices minus copies of training rows)",
            "how": "training.data.split_rows(rows of all datasets in order, val_set_size, seed)",
        },
        "trainable_parameters": trainable,
        "total_parameters": total,
        "steps": state.global_step,
        "epochs": state.epoch,
        "trained_tokens": trained_tokens,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(wall_seconds, 1),
        "tokens_per_s": round(trained_tokens / train_seconds, 1) if train_seconds else None,
        "peak_memory_mb": round(peak_memory_mb, 1),
        "loss_curve": jsonl.loss_curve,
        "eval_curve": jsonl.eval_curve,
        "metrics": metrics,
        "resumed_from": resume,
        "libraries": library_versions(),
        "python": sys.version.split()[0],
        "created_at": created_at,
    }
