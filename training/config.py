"""The training config: one pydantic model, loaded from YAML, written back into the manifest.

Keys follow Axolotl's names, and an Axolotl config trains as it is or is refused with a
reason per key. Every Axolotl key is one of three things (the table is
:data:`AXOLOTL_MEANINGLESS`, :data:`AXOLOTL_REFUSED` and the fields below; docs/training.md
shows it whole):

1. *honoured*: a field of :class:`TrainConfig` / :class:`DatasetSpec` (``load_in_4bit`` ->
   QLoRA, ``load_in_8bit`` -> 8-bit base, ``lora_target_linear``, ``optimizer``,
   ``bf16: auto``, ``special_tokens``, ``chat_template``, ``eot_tokens``,
   ``saves_per_epoch``, ``evals_per_epoch``, ``gradient_checkpointing_kwargs``,
   ``resume_from_checkpoint`` (empty, a boolean or a path), ``peft_use_dora``, ...);
2. *meaningless here*: dropped with one warning line (:attr:`TrainConfig.notes`);
3. *refused*: an error naming the key and why.

A key left empty in YAML (``wandb_project:``) is unset and needs no handling. Unknown keys
are rejected with the key named; ``--set key=value`` overrides are parsed as YAML scalars.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from training.formats import DatasetType
from tuneserve.errors import UserError
from tuneserve.home import adapters_dir
from tuneserve.yaml_file import load_yaml_mapping

Optimizer = Literal[
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "sgd",
    "adafactor",
]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The server formats prompts with the base model's own template; training with another
# would teach a format the served adapter never sees.
SAME_TEMPLATE = ("tokenizer_default", "gemma3")
REPORTERS = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow"}

# Axolotl keys that change nothing here: dropped with one warning line each.
AXOLOTL_MEANINGLESS: dict[str, str] = {
    "flash_attention": "attention kernels are a speed setting; PyTorch SDPA is used",
    "sdp_attention": "PyTorch SDPA is always used",
    "xformers_attention": "attention kernels are a speed setting; PyTorch SDPA is used",
    "flex_attention": "attention kernels are a speed setting; PyTorch SDPA is used",
    "tf32": "TF32 matmuls exist on NVIDIA GPUs only; this run computes in float32/bfloat16",
    "unfrozen_parameters": "an adapter trains only its LoRA weights (it cannot carry base "
    "weights to the server)",
    "eval_sample_packing": "held-out rows are never packed",
    "dataset_prepared_path": "rows are tokenized in memory, nothing is cached",
    "dataset_processes": "rows are tokenized in this process",
    "dataloader_num_workers": "the data is in memory already",
    "dataloader_pin_memory": "set per device",
    "dataloader_prefetch_factor": "the data is in memory already",
    "pad_to_sequence_len": "padding to sequence_len only costs compute",
    "strict": "config keys are always checked",
    "hf_use_auth_token": "models and data are local",
    "torch_compile": "a speed setting; not used",
    "group_by_length": "rows of similar length always share a batch (training/sampling.py)",
    "save_safetensors": "adapters are always saved as safetensors",
    "is_llama_derived_model": "the model type is read from its config",
    "is_mistral_derived_model": "the model type is read from its config",
    "is_qwen_derived_model": "the model type is read from its config",
    "debug": "progress goes to the JSON-lines log",
    "eval_table_size": "use tuneserve eval for generations",
    "eval_max_new_tokens": "use tuneserve eval for generations",
    "gpu_memory_limit": "one device, sized by the runtime",
    "ddp": "one process: no distributed training",
    "local_rank": "one process: no distributed training",
    "model_type": "the model class is read from the base model's config",
    "tokenizer_type": "the tokenizer class is read from the base model's folder",
    "attn_implementation": "attention kernels are a speed setting; PyTorch SDPA is used",
    "s2_attention": "attention kernels are a speed setting; PyTorch SDPA is used",
    "loss_watchdog_threshold": "no loss watchdog: the loss curve is in the JSON-lines log",
    "loss_watchdog_patience": "no loss watchdog: the loss curve is in the JSON-lines log",
    "save_first_step": "checkpoints follow save_steps / saves_per_epoch",
}
AXOLOTL_MEANINGLESS_PREFIXES = {"ddp_": "one process: no distributed training"}
# Axolotl keys refused with the reason when set (to anything but empty/false).
AXOLOTL_REFUSED: dict[str, str] = {
    "deepspeed": "one process on one device: no DeepSpeed",
    "fsdp": "one process on one device: no FSDP",
    "fsdp_config": "one process on one device: no FSDP",
    "fp16": "float16 training is not supported; use bf16 (or leave it for float32)",
    "hub_model_id": "nothing is uploaded; the adapter is written to output_dir",
    "hub_strategy": "nothing is uploaded; the adapter is written to output_dir",
    "push_dataset_to_hub": "nothing is uploaded",
    "trust_remote_code": "only models whose code ships with transformers are loaded",
    "lora_modules_to_save": "vLLM cannot serve adapters with fully trained modules",
    "lora_fan_in_fan_out": "only the standard LoRA weight layout is trained",
    "chat_template_jinja": "the server formats prompts with the base model's own template",
    "relora_steps": "ReLoRA is not supported",
    "llama4_linearized_experts": "not a supported model",
    "adapter_name": "the adapter name is name (or output_dir's folder name)",
    "lora_model_dir": "training starts from a fresh adapter; resume with resume_from_checkpoint",
    "model_config_type": "the model type is read from its config",
}
# `adapter` values: PEFT methods (one PEFT config each, built in training/trainer.py),
# plus "full" (every base weight trained, no PEFT).
Adapter = Literal[
    "lora", "qlora", "lora_fa", "vera", "adalora", "ia3", "prompt_tuning", "prefix_tuning", "full"
]
# Methods whose weights are LoRA A/B matrices (use_dora / use_rslora / LoRA+ apply to them).
LORA_FAMILY = ("lora", "qlora", "lora_fa")
# Methods the compact LM head does not apply to: prompt/prefix tuning change the sequence
# the head sees (virtual tokens, a past cache), so TRL's own fused head is kept.
NO_COMPACT_HEAD = ("prompt_tuning", "prefix_tuning")
# Preference methods (`rl`, Axolotl's key): TRL's DPOTrainer / ORPOTrainer.
RL = Literal["dpo", "orpo"]
DEFAULT_RL_BETA = 0.1  # TRL's default for DPO's beta and ORPO's lambda
_WANDB_KEYS = (
    "wandb_project",
    "wandb_entity",
    "wandb_watch",
    "wandb_name",
    "wandb_log_model",
    "wandb_run_id",
    "wandb_mode",
)


class DatasetSpec(BaseModel):
    """One training data source: its file, its format and the format's field mappings."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="File or folder; relative paths resolve against the config file.")
    type: DatasetType | None = Field(None, description="Format; auto-detected when left out.")
    split: str | None = Field(
        None, description="Split of a saved `datasets` DatasetDict folder (hf_datasets only)."
    )
    ds_type: Literal["json", "jsonl", "csv", "parquet", "arrow"] | None = Field(
        None, description="File kind (Axolotl's); guessed from the extension when left out."
    )
    field_messages: str | None = Field(
        None, description="chat_template/sharegpt: the column holding the message list."
    )
    message_property_mappings: dict[str, str] | None = Field(
        None, description="Our message key -> the file's (role: from, content: value)."
    )
    message_field_role: str | None = Field(
        None, description="Older Axolotl form of the role mapping."
    )
    message_field_content: str | None = Field(
        None, description="Older Axolotl form of the content mapping."
    )
    message_field_training: str | None = Field(
        None, description="Per-message boolean column: false = this assistant turn is not trained."
    )
    roles: dict[Literal["system", "user", "assistant", "tool"], list[str]] | None = Field(
        None, description="Our role -> the file's role values (default: human/gpt/... too)."
    )
    roles_to_train: list[Literal["assistant", "gpt"]] | None = Field(
        None, description="Only the assistant's turns are trained (Axolotl's default)."
    )
    train_on_eos: Literal["turn"] | None = Field(
        None, description="Each trained turn's end-of-turn token is trained (Axolotl's default)."
    )
    field: str | None = Field(None, description="completion: the column holding the text.")
    columns: dict[str, str] | None = Field(
        None, description="The format's field -> the file's column (CSV/JSON column mapping)."
    )
    ignore_fields: list[str] = Field(
        default_factory=list, description="Columns to leave out on purpose (else an error)."
    )
    chat_template: str | None = Field(
        None, description="Must be the base model's own template (tokenizer_default/gemma3)."
    )

    @field_validator("message_property_mappings")
    @classmethod
    def _known_properties(cls, value):
        unknown = sorted(set(value or {}) - {"role", "content"})
        if unknown:
            raise ValueError(
                f"cannot map message propert(ies) {', '.join(unknown)} (only role and content; "
                "tool calls are the lead's follow-up)"
            )
        return value

    @field_validator("chat_template")
    @classmethod
    def _same_template(cls, value):
        return _check_template(value)

    def format_options(self):
        """The field mappings as :class:`training.formats.FormatOptions`."""
        from training.formats import FormatOptions

        props = dict(self.message_property_mappings or {})
        if self.message_field_role:
            props.setdefault("role", self.message_field_role)
        if self.message_field_content:
            props.setdefault("content", self.message_field_content)
        return FormatOptions(
            field_messages=self.field_messages,
            message_property_mappings=props,
            roles=dict(self.roles or {}),
            message_field_training=self.message_field_training,
            text_field=self.field,
            columns=dict(self.columns or {}),
            ignore_fields=tuple(self.ignore_fields),
        )


def _check_template(value: str | None) -> str | None:
    if value is not None and value not in SAME_TEMPLATE:
        raise ValueError(
            f"chat_template {value!r} is refused: the server formats prompts with the base "
            f"model's own template, so training must use it too ({' or '.join(SAME_TEMPLATE)})"
        )
    return value


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VeraOptions(_Options):
    """PEFT ``VeraConfig``: shared frozen random projections, trained scaling vectors."""

    r: int = Field(256, ge=1, description="Rank of the shared random projections.")
    d_initial: float = Field(0.1, gt=0, description="Initial value of the d vectors.")
    vera_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the VeRA input.")
    projection_prng_key: int = Field(0, description="Seed of the shared projections.")


class AdaLoraOptions(_Options):
    """PEFT ``AdaLoraConfig``: LoRA whose rank budget is pruned from init_r to target_r."""

    init_r: int = Field(12, ge=1, description="Starting rank of every matrix.")
    target_r: int = Field(8, ge=1, description="Average rank left after pruning.")
    tinit: int = Field(0, ge=0, description="Steps of warm-up before pruning starts.")
    tfinal: int = Field(0, ge=0, description="Steps at the end with the final budget fixed.")
    deltaT: int = Field(1, ge=1, description="Steps between two budget allocations.")
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA factor of the sensitivity.")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA factor of its uncertainty.")

    @model_validator(mode="after")
    def _ranks(self):
        if self.target_r > self.init_r:
            raise ValueError(f"target_r {self.target_r} is larger than init_r {self.init_r}")
        return self


class IA3Options(_Options):
    """PEFT ``IA3Config``: learned vectors rescaling activations."""

    target_modules: list[str] | None = Field(
        None, description="Modules to rescale (PEFT's default for the model: k, v, down)."
    )
    feedforward_modules: list[str] | None = Field(
        None, description="Those of target_modules rescaled on their input (MLP layers)."
    )

    @model_validator(mode="after")
    def _subset(self):
        if self.feedforward_modules and self.target_modules is None:
            raise ValueError("feedforward_modules needs target_modules")
        extra = set(self.feedforward_modules or ()) - set(self.target_modules or ())
        if extra:
            raise ValueError(f"feedforward_modules {sorted(extra)} are not in target_modules")
        return self


class PromptTuningOptions(_Options):
    """PEFT ``PromptTuningConfig``: trained soft-prompt embeddings before the input."""

    num_virtual_tokens: int = Field(20, ge=1, le=512, description="Soft-prompt length.")
    init_text: str | None = Field(
        None, description="Initialise from this text's token embeddings (else random)."
    )


class PrefixTuningOptions(_Options):
    """PEFT ``PrefixTuningConfig``: trained key/value prefixes in every attention layer."""

    num_virtual_tokens: int = Field(20, ge=1, le=512, description="Prefix length.")
    prefix_projection: bool = Field(False, description="Reparameterise through an MLP.")
    encoder_hidden_size: int | None = Field(
        None, ge=1, description="Hidden size of that MLP (prefix_projection only)."
    )


# Option block key -> the adapter it belongs to.
METHOD_OPTIONS = {
    "vera": "vera",
    "adalora": "adalora",
    "ia3": "ia3",
    "prompt_tuning": "prompt_tuning",
    "prefix_tuning": "prefix_tuning",
}


class TrainConfig(BaseModel):
    """Everything a training run needs. Every field has a default except the data and name."""

    model_config = ConfigDict(extra="forbid")

    # --- what to train -------------------------------------------------------------------
    base_model: str = Field("gemma-3-270m", description="Registered base model name or a folder.")
    name: str = Field(
        description="Adapter name: the folder under output_dir and the served id. Left out, "
        "output_dir is the adapter folder itself and name is its last part (Axolotl's way)."
    )
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
        False, description="false = loss on the assistant turns only (completion tokens)."
    )
    dataset_exact_deduplication: bool = Field(
        False, description="Drop training rows that repeat an earlier one (else counted only)."
    )
    chat_template: str | None = Field(
        None, description="Must be the base model's own template (tokenizer_default/gemma3)."
    )
    eot_tokens: list[str] = Field(
        default_factory=lambda: ["<end_of_turn>"],
        min_length=1,
        description="Tokens that end an assistant turn (trained, and where the loss stops).",
    )
    special_tokens: (
        dict[Literal["bos_token", "eos_token", "pad_token", "unk_token"], str] | None
    ) = Field(None, description="Tokenizer special tokens; each must already be in the vocabulary.")

    # --- adapter -------------------------------------------------------------------------
    adapter: Adapter = Field(
        "lora",
        description="Training method: lora, qlora (4-bit NF4 base), lora_fa (LoRA-FA optimiser), "
        "vera, adalora, ia3, prompt_tuning, prefix_tuning (PEFT), full (every weight).",
    )
    vera: VeraOptions | None = Field(None, description="adapter: vera options.")
    adalora: AdaLoraOptions | None = Field(None, description="adapter: adalora options.")
    ia3: IA3Options | None = Field(None, description="adapter: ia3 options.")
    prompt_tuning: PromptTuningOptions | None = Field(
        None, description="adapter: prompt_tuning options."
    )
    prefix_tuning: PrefixTuningOptions | None = Field(
        None, description="adapter: prefix_tuning options."
    )
    rl: RL | None = Field(
        None, description="Preference training on prompt/chosen/rejected rows: dpo or orpo."
    )
    rl_beta: float | None = Field(
        None, gt=0, description="DPO's beta (default 0.1) / ORPO's lambda (default 0.1)."
    )
    load_in_4bit: bool = Field(False, description="4-bit NF4 base = adapter qlora (Axolotl's).")
    load_in_8bit: bool = Field(False, description="8-bit (LLM.int8) base under a LoRA adapter.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear."
    )
    lora_target_linear: bool | None = Field(
        None, description="true = adapt every linear layer (lora_target_modules: all-linear)."
    )
    use_dora: bool = Field(
        False, description="Weight-decomposed LoRA (DoRA; vLLM cannot serve it)."
    )
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r).")
    peft_use_dora: bool | None = Field(None, description="Axolotl's name for use_dora.")
    peft_use_rslora: bool | None = Field(None, description="Axolotl's name for use_rslora.")
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: learning rate of B = ratio x learning rate of A."
    )

    # --- optimisation --------------------------------------------------------------------
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    optimizer: Optimizer | None = Field(
        None,
        description="transformers optimizer name (default: its AdamW); 8-bit ones need "
        "bitsandbytes.",
    )
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
    bf16: bool | Literal["auto"] | None = Field(
        None,
        description="true = dtype bfloat16; auto = bfloat16 where the GPU supports it, "
        "else float32 (CPUs here have no bf16 units).",
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
    gradient_checkpointing_kwargs: dict[str, Any] | None = Field(
        None, description="Passed to transformers (e.g. use_reentrant: false)."
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
    saves_per_epoch: int | None = Field(
        None, ge=1, description="Checkpoints per epoch (wins over save_steps)."
    )
    evals_per_epoch: int | None = Field(
        None, ge=1, description="Held-out evaluations per epoch (wins over eval_steps)."
    )
    report_to: list[Literal["wandb", "tensorboard", "mlflow"]] = Field(
        default_factory=list, description="Metric loggers; each needs its package installed."
    )
    wandb: dict[str, str] = Field(
        default_factory=dict, description="wandb_* keys (project, entity, name, ...) for W&B."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after N evaluations without eval-loss improvement."
    )
    resume_from_checkpoint: bool | str = Field(
        False,
        description="true = resume from the newest checkpoint of this name, if any; a path = "
        "resume from that checkpoint folder; empty = false.",
    )
    _notes: list[str] = PrivateAttr(default_factory=list)

    @property
    def notes(self) -> list[str]:
        """Warning lines about accepted-but-meaningless keys (one per key)."""
        return self._notes

    @model_validator(mode="before")
    @classmethod
    def _axolotl_forms(cls, raw: Any) -> Any:
        """Axolotl spellings onto ours: the default name, aliases, 4/8-bit, bf16."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        if raw.get("name") is None and raw.get("output_dir"):
            out = Path(str(raw["output_dir"]))
            raw["name"], raw["output_dir"] = out.name, str(out.parent)
        if raw.get("orpo_alpha") is not None:  # Axolotl's name for ORPO's weight
            raw.setdefault("rl_beta", raw.pop("orpo_alpha"))
        for alias, ours in (("peft_use_dora", "use_dora"), ("peft_use_rslora", "use_rslora")):
            if raw.get(alias) is not None:
                raw[ours] = raw[alias]
        if raw.get("load_in_4bit"):
            raw["adapter"] = "qlora"
        elif raw.get("adapter") == "qlora":
            raw["load_in_4bit"] = True
        if raw.get("lora_target_linear"):
            raw["lora_target_modules"] = "all-linear"
        if raw.get("resume_from_checkpoint") is None or raw.get("resume_from_checkpoint") == "":
            raw["resume_from_checkpoint"] = False
        bf16 = raw.get("bf16")
        if bf16 == "auto":
            raw["dtype"] = _auto_dtype()
        elif bf16 is True:
            raw["dtype"] = "bfloat16"
        elif bf16 is False:
            raw["dtype"] = "float32"
        return raw

    @field_validator("chat_template")
    @classmethod
    def _same_template(cls, value):
        return _check_template(value)

    @field_validator("report_to", mode="before")
    @classmethod
    def _reporters(cls, value):
        if value in (None, "none", "None", []):
            return []
        names = [value] if isinstance(value, str) else list(value)
        for name in names:
            package = REPORTERS.get(name)
            if package and importlib.util.find_spec(package) is None:
                raise ValueError(f"report_to {name!r} is refused: {package} is not installed")
        return names

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.load_in_8bit and self.load_in_4bit:
            raise ValueError("use either load_in_4bit (QLoRA) or load_in_8bit, not both")
        if self.loraplus_lr_ratio and self.optimizer not in (
            None,
            "adamw_torch",
            "adamw_torch_fused",
        ):
            raise ValueError("loraplus_lr_ratio builds its own AdamW; leave optimizer unset")
        self._check_method()
        if self.evals_per_epoch and not (self.val_set_size or self.val_datasets):
            raise ValueError("evals_per_epoch needs a held-out set (val_set_size > 0)")
        if not _NAME_RE.match(self.name):
            raise ValueError(
                f"name {self.name!r} is not valid: use letters, digits, '.', '_' or '-' "
                "(at most 64 characters)"
            )
        if self.val_datasets and self.val_set_size:
            raise ValueError("use either val_set_size or val_datasets, not both")
        if self.early_stopping_patience and not (self.val_set_size or self.val_datasets):
            raise ValueError("early_stopping_patience needs a held-out set (val_set_size > 0)")
        if self.early_stopping_patience and not (self.eval_steps or self.evals_per_epoch):
            raise ValueError("early_stopping_patience needs eval_steps")
        return self

    def _check_method(self) -> None:
        """Every method key belongs to the chosen method (nothing set is silently unused)."""
        for key, method in METHOD_OPTIONS.items():
            if getattr(self, key) is not None and self.adapter != method:
                raise ValueError(f"{key} options are for adapter: {method}, not {self.adapter}")
        lora_only = {
            "use_dora": self.use_dora,
            "use_rslora": self.use_rslora,
            "loraplus_lr_ratio": self.loraplus_lr_ratio,
            "load_in_8bit": self.load_in_8bit,
        }
        if self.adapter not in LORA_FAMILY:
            for key, value in lora_only.items():
                if value:
                    raise ValueError(f"{key} applies to LoRA adapters, not adapter: {self.adapter}")
            defaults = TrainConfig.model_fields
            keys = ["lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"]
            if self.adapter == "adalora":  # alpha, dropout and targets are AdaLoRA's too
                keys = ["lora_r"]
            elif self.adapter == "vera":  # VeRA's rank and dropout are vera.r, vera_dropout
                keys = ["lora_r", "lora_alpha", "lora_dropout"]
            for key in keys:
                if getattr(self, key) != defaults[key].default:
                    hint = {"adalora": " (use adalora.init_r / target_r)",
                            "vera": " (use vera.r)", "ia3": " (use ia3.target_modules)"}
                    raise ValueError(f"{key} applies to LoRA adapters, not adapter: "
                                     f"{self.adapter}{hint.get(self.adapter, '')}")
        if self.adapter == "lora_fa":
            if self.use_dora or self.loraplus_lr_ratio:
                raise ValueError("adapter lora_fa builds its own optimiser: no use_dora or "
                                 "loraplus_lr_ratio")
            if self.optimizer is not None:
                raise ValueError("adapter lora_fa builds its own optimiser; leave optimizer unset")
        if self.rl_beta is not None and self.rl is None:
            raise ValueError("rl_beta needs rl: dpo or orpo")
        if self.rl is not None:
            if self.sample_packing:
                raise ValueError(f"sample_packing is for SFT; rl: {self.rl} scores whole "
                                 "prompt/chosen/rejected rows")
            if self.train_on_inputs:
                raise ValueError(f"train_on_inputs is for SFT; rl: {self.rl} scores the chosen "
                                 "and rejected answers only")

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


def translate_axolotl(raw: dict) -> tuple[dict, list[str], list[str]]:
    """Sort an Axolotl-style mapping's keys: returns (the keys TrainConfig validates,
    warning lines for meaningless keys, refusal reasons). Empty keys are unset."""
    kept: dict[str, Any] = {}
    notes: list[str] = []
    refused: list[str] = []
    wandb: dict[str, str] = {}
    for key, value in raw.items():
        if value is None or (key not in TrainConfig.model_fields and value == ""):
            continue  # an empty YAML key: unset
        if key == "datasets" and isinstance(value, list):
            value = [_drop_empty(d) if isinstance(d, dict) else d for d in value]
        if key in AXOLOTL_REFUSED:
            if value not in (False, [], {}):
                refused.append(f"{key}: {AXOLOTL_REFUSED[key]}")
            continue
        prefix = next((p for p in AXOLOTL_MEANINGLESS_PREFIXES if key.startswith(p)), None)
        reason = AXOLOTL_MEANINGLESS.get(key) or (
            AXOLOTL_MEANINGLESS_PREFIXES[prefix] if prefix else None
        )
        if reason:
            if value is not False:  # turning off what is off anyway ignores nothing
                notes.append(f"{key} is ignored: {reason}")
            continue
        if key == "auto_resume_from_checkpoints":
            kept.setdefault("resume_from_checkpoint", bool(value))
            continue
        if key in _WANDB_KEYS:
            wandb[key.removeprefix("wandb_")] = str(value)
            continue
        kept[key] = value
    if wandb:
        if importlib.util.find_spec("wandb") is None:
            refused.append(
                f"{', '.join('wandb_' + k for k in wandb)}: W&B logging was asked for but "
                "wandb is not installed (install it, or leave these keys empty)"
            )
        else:
            kept["wandb"] = {**wandb, **(kept.get("wandb") or {})}
            kept["report_to"] = sorted({*_as_list(kept.get("report_to")), "wandb"})
    return kept, notes, refused


def _drop_empty(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if v is not None}


def _as_list(value: Any) -> list:
    if value in (None, "none"):
        return []
    return [value] if isinstance(value, str) else list(value)


def _auto_dtype() -> str:
    """bf16: auto -> bfloat16 on a GPU with bf16 units, else float32 (fastest on CPUs
    without them, which is what this project runs on)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def config_from_dict(raw: dict, *, base_dir: Path | None = None) -> TrainConfig:
    """Validate a config mapping; relative dataset/output paths resolve against ``base_dir``.

    Axolotl keys are sorted first (:func:`translate_axolotl`); meaningless ones end up as
    warning lines in ``config.notes``. Raises UserError naming every refused or invalid key
    in one readable message.
    """
    kept, notes, refused = translate_axolotl(raw)
    try:
        config = TrainConfig.model_validate(kept)
    except ValidationError as exc:
        refused.append(_describe(exc))
        config = None
    if refused:
        raise UserError(f"invalid training config: {'; '.join(refused)}")
    assert config is not None
    config._notes.extend(notes)
    if base_dir is not None:
        for spec in [*config.datasets, *(config.val_datasets or [])]:
            if not Path(spec.path).is_absolute():
                spec.path = str((base_dir / spec.path).resolve())
        if config.output_dir and not Path(config.output_dir).is_absolute():
            config.output_dir = str((base_dir / config.output_dir).resolve())
        resume = config.resume_from_checkpoint
        if isinstance(resume, str) and not Path(resume).is_absolute():
            config.resume_from_checkpoint = str((base_dir / resume).resolve())
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
        notes = config.notes
        config = config_from_dict(merged, base_dir=Path.cwd())
        config._notes[:0] = notes
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
