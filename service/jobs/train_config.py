"""Turn a fine-tuning job request into a ``tuneserve train`` config (contract #1).

OpenAI's hyperparameters map onto the Axolotl-style keys of ``training.config.TrainConfig``:
``n_epochs`` -> ``num_epochs``, ``batch_size`` -> ``micro_batch_size``,
``learning_rate_multiplier`` x the default learning rate -> ``learning_rate``; for
``method.type = dpo``, ``rl: dpo`` with ``beta`` -> ``rl_beta``.
LoRA settings ride in ``method.supervised.hyperparameters`` as extra keys (the SDK sends
TypedDict keys it does not know unchanged), see ``EXTENSION_KEYS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.adapters.checks import SUPPORTED_TARGET_MODULES
from training.auto import (
    AUTO_LEARNING_RATE_MULTIPLIER,
    auto_batch_size,
    auto_epochs,
)
from training.config import DEFAULT_RL_BETA, TrainConfig, config_from_dict

# Extension hyperparameters -> TrainConfig keys (documented in docs/fine-tuning.md).
EXTENSION_KEYS: dict[str, str] = {
    "lora_rank": "lora_r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "max_steps": "max_steps",
    "sequence_len": "sequence_len",
    "save_steps": "save_steps",
    "logging_steps": "logging_steps",
    "warmup_steps": "warmup_steps",
}
# `qlora: true` selects the 4-bit base (adapter: qlora).
QLORA_KEY = "qlora"
# How many training processes (DDP) the supervisor launches: not a TrainConfig key; checked
# against JobsSettings.max_processes when the job is created, read back by the supervisor.
PROCESSES_KEY = "num_processes"
OPENAI_KEYS = ("n_epochs", "batch_size", "learning_rate_multiplier")
# OpenAI's hyperparameters of one method besides OPENAI_KEYS (openai.types.fine_tuning).
METHOD_KEYS: dict[str, tuple[str, ...]] = {"supervised": (), "dpo": ("beta",)}
DEFAULT_LEARNING_RATE = TrainConfig.model_fields["learning_rate"].default


def resolve_hyperparameters(
    hp: dict[str, Any], n_train_rows: int, *, method: str = "supervised"
) -> dict[str, Any]:
    """Replace ``"auto"``/missing OpenAI hyperparameters with the values actually used,
    chosen from the number of training rows by the rules of ``training.auto`` (and, for
    ``dpo``, ``beta`` = TRL's default)."""
    auto = {
        "n_epochs": auto_epochs(n_train_rows),
        "batch_size": auto_batch_size(n_train_rows),
        "learning_rate_multiplier": AUTO_LEARNING_RATE_MULTIPLIER,
    }
    if method == "dpo":
        auto["beta"] = DEFAULT_RL_BETA
    out = dict(hp)
    for key, value in auto.items():
        if out.get(key) in (None, "auto"):
            out[key] = value
    return out


def build_train_config(
    *,
    job_id: str,
    base_model_path: str,
    training_path: Path,
    validation_path: Path | None,
    held_out_rows: int,
    seed: int,
    hyperparameters: dict[str, Any],
    output_dir: Path,
    method: str = "supervised",
) -> dict[str, Any]:
    """The validated training config (as a JSON-able dict) for one job.

    ``hyperparameters`` are already resolved (see :func:`resolve_hyperparameters`) and may
    hold extension keys. Without a validation file, ``held_out_rows`` rows of the training
    file are split off with ``seed`` (``training.auto.held_out_rows``) and recorded in the
    adapter's manifest, so the job's adapter can be judged on rows it never saw. Raises ``tuneserve.errors.UserError`` naming a bad value.
    """
    hp = hyperparameters
    raw: dict[str, Any] = {
        "base_model": base_model_path,
        "name": job_id,
        "output_dir": str(output_dir),
        "datasets": [{"path": str(training_path)}],
        "seed": seed,
        "num_epochs": hp["n_epochs"],
        "micro_batch_size": hp["batch_size"],
        "learning_rate": DEFAULT_LEARNING_RATE * float(hp["learning_rate_multiplier"]),
        # The engine's LoRA layers by name: PEFT writes "all-linear" out as full module
        # paths, which the registry's check refuses; this list is the same layers.
        "lora_target_modules": sorted(SUPPORTED_TARGET_MODULES),
    }
    for ext_key, config_key in EXTENSION_KEYS.items():
        if hp.get(ext_key) is not None:
            raw[config_key] = hp[ext_key]
    if hp.get(QLORA_KEY):
        raw["adapter"] = "qlora"
    if validation_path is not None:
        raw["val_datasets"] = [{"path": str(validation_path)}]
    elif held_out_rows:
        raw["val_set_size"] = held_out_rows
    method_keys = METHOD_KEYS[method]
    if method == "dpo":
        raw["rl"], raw["rl_beta"] = "dpo", float(hp["beta"])
    supported = [*OPENAI_KEYS, *method_keys, *EXTENSION_KEYS, QLORA_KEY, PROCESSES_KEY]
    unknown = sorted(set(hp) - set(supported))
    if unknown:
        from tuneserve.errors import UserError

        raise UserError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for method {method}; supported: "
            f"{', '.join(supported)}"
        )
    return config_from_dict(raw).model_dump(mode="json")


def job_processes(job: dict[str, Any]) -> int:
    """The training processes a stored job asked for (1 unless ``num_processes`` was set)."""
    method = job.get("method") or {}
    chosen = method.get(method.get("type") or "supervised") or {}
    return int((chosen.get("hyperparameters") or {}).get(PROCESSES_KEY) or 1)
