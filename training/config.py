"""The training config: one pydantic model, loaded from YAML, written back into the manifest.

Keys follow Axolotl's names so its users feel at home. Unknown keys are rejected with the
key named; ``--set key=value`` overrides are parsed as YAML scalars (``--set lora_r=8``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneserve.errors import UserError
from tuneserve.home import adapters_dir
from tuneserve.yaml_file import load_yaml_mapping

DatasetType = Literal["chat", "alpaca", "prompt_completion", "chat_csv", "hf_datasets"]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class DatasetSpec(BaseModel):
    """One training data source."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="File or folder; relative paths resolve against the config file.")
    type: DatasetType | None = Field(None, description="Format; auto-detected when left out.")
    split: str | None = Field(
        None, description="Split of a saved `datasets` DatasetDict folder (hf_datasets only)."
    )


class TrainConfig(BaseModel):
    """Everything a training run needs. Every field has a default except the data and name."""

    model_config = ConfigDict(extra="forbid")

    # --- what to train -------------------------------------------------------------------
    base_model: str = Field("gemma-3-270m", description="Registered base model name or a folder.")
    name: str = Field(description="Adapter name: the folder under output_dir and the served id.")
    output_dir: str | None = Field(
        None, description="Where adapters go ($TUNESERVE_HOME/adapters)."
    )
    overwrite: bool = Field(False, description="Replace an existing adapter of the same name.")

    # --- data ----------------------------------------------------------------------------
    datasets: list[DatasetSpec] = Field(min_length=1, description="Training data sources.")
    val_set_size: float = Field(
        0.0, ge=0, description="Held-out share (<1) or row count (>=1) split off with `seed`."
    )
    val_datasets: list[DatasetSpec] | None = Field(
        None, description="Separate validation files (instead of splitting with val_set_size)."
    )
    system_prompt: str | None = Field(
        None, description="System message added to rows that have none (recorded in the manifest)."
    )
    drop_invalid_rows: bool = Field(
        False, description="Drop rows that fail validation instead of refusing to start."
    )
    sequence_len: int = Field(512, ge=8, description="Max tokens per row; longer rows are errors.")
    sample_packing: bool = Field(
        False, description="Pack rows into sequence_len (TRL bfd packing)."
    )
    train_on_inputs: bool = Field(
        False, description="false = loss on the assistant answer only (completion tokens)."
    )

    # --- adapter -------------------------------------------------------------------------
    adapter: Literal["lora", "qlora"] = Field("lora", description="qlora = 4-bit NF4 base.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear."
    )
    use_dora: bool = Field(
        False, description="Weight-decomposed LoRA (DoRA; vLLM cannot serve it)."
    )
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r).")
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: learning rate of B = ratio x learning rate of A."
    )

    # --- optimisation --------------------------------------------------------------------
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name.")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="Warmup share of steps.")
    warmup_steps: int | None = Field(None, ge=0, description="Warmup steps (wins over ratio).")
    num_epochs: float = Field(1.0, gt=0, description="Epochs, unless max_steps is set.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    micro_batch_size: int = Field(8, ge=1, description="Rows per forward pass.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per step.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Compute dtype; float32 is fastest on CPUs without bf16 units."
    )
    compact_lm_head: bool = Field(
        True, description="Project only supervised positions through the LM head (speed)."
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass: saves memory, costs "
        "compute (14% of the step time for Gemma 270M here). TRL turns it on by default; "
        "small models do not need it.",
    )

    # --- bookkeeping ---------------------------------------------------------------------
    seed: int = Field(42, description="Seed for the split, LoRA init and data order.")
    logging_steps: int = Field(
        5, ge=1, description="Log (and write a progress event) every N steps."
    )
    eval_max_rows: int | None = Field(
        None, ge=1, description="Compute held-out loss on the first N held-out rows only (speed)."
    )
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps (else at end).")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps (for resume).")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after N evaluations without eval-loss improvement."
    )
    resume_from_checkpoint: bool = Field(
        False, description="Resume from the newest checkpoint of this name, if any."
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if not _NAME_RE.match(self.name):
            raise ValueError(
                f"name {self.name!r} is not valid: use letters, digits, '.', '_' or '-' "
                "(at most 64 characters)"
            )
        if self.val_datasets and self.val_set_size:
            raise ValueError("use either val_set_size or val_datasets, not both")
        if self.early_stopping_patience and not (self.val_set_size or self.val_datasets):
            raise ValueError("early_stopping_patience needs a held-out set (val_set_size > 0)")
        if self.early_stopping_patience and not self.eval_steps:
            raise ValueError("early_stopping_patience needs eval_steps")
        return self

    @property
    def adapter_root(self) -> Path:
        """The folder adapters are written into."""
        return Path(self.output_dir) if self.output_dir else adapters_dir()

    @property
    def adapter_path(self) -> Path:
        return self.adapter_root / self.name

    @property
    def checkpoint_dir(self) -> Path:
        return self.adapter_root / ".checkpoints" / self.name


def parse_overrides(overrides: list[str]) -> dict:
    """``["a=1", "b.c=x"]`` -> nested dict; values are YAML scalars (numbers, bools, lists)."""
    result: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return result


def config_from_dict(raw: dict, *, base_dir: Path | None = None) -> TrainConfig:
    """Validate a config mapping; relative dataset/output paths resolve against ``base_dir``.

    Raises UserError naming the offending key(s) in one readable message.
    """
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"invalid training config: {_describe(exc)}") from None
    if base_dir is not None:
        for spec in [*config.datasets, *(config.val_datasets or [])]:
            if not Path(spec.path).is_absolute():
                spec.path = str((base_dir / spec.path).resolve())
        if config.output_dir and not Path(config.output_dir).is_absolute():
            config.output_dir = str((base_dir / config.output_dir).resolve())
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML config and apply ``--set key=value`` overrides; return the validated config.

    Dataset paths in the file resolve against the file's folder, paths given with --set
    against the current directory.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    raw = load_yaml_mapping(path, "config file")
    config = config_from_dict(raw, base_dir=path.resolve().parent)
    if overrides:
        merged = config.model_dump(mode="json")
        extra = parse_overrides(overrides)
        merged.update(extra)
        config = config_from_dict(merged, base_dir=Path.cwd())
    return config


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        elif err["type"] == "missing":
            parts.append(f"missing required key {loc!r}")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
