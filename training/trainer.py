"""The TRL trainer, the PEFT model and the ``SFTConfig`` a :class:`TrainConfig` maps onto.

``AdapterSFTTrainer`` is TRL's ``SFTTrainer`` plus our hooks (compact LM head, LoRA+,
length-grouped sampling); importing this module imports torch, TRL and PEFT.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from trl import SFTTrainer

from training.config import TrainConfig
from training.lm_head import add_compact_lm_head, compact_head_unsupported
from training.sampling import ShuffledLengthGroupedSampler

log = logging.getLogger(__name__)


class AdapterSFTTrainer(SFTTrainer):
    """``SFTTrainer`` plus two hooks: the compact LM head and the LoRA+ optimiser."""

    def __init__(
        self,
        *args,
        compact_lm_head: bool = True,
        loraplus_lr_ratio: float | None = None,
        **kwargs,
    ):
        self._loraplus_lr_ratio = loraplus_lr_ratio
        super().__init__(*args, **kwargs)
        reason = compact_head_unsupported() if compact_lm_head else None
        if reason:
            log.warning(reason)
        elif compact_lm_head:
            model = self.model
            add_compact_lm_head(model.get_base_model() if isinstance(model, PeftModel) else model)

    def _get_train_sampler(self, train_dataset=None):
        """Length-grouped batches in shuffled order (training/sampling.py says why)."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
            return super()._get_train_sampler(train_dataset)
        lengths = [len(ids) for ids in dataset["input_ids"]]
        # One optimizer step's rows across all processes: every rank draws the same seeded
        # order and accelerate deals its batches out, so N processes see the rows one
        # process with N times the accumulation would.
        batch = (
            self.args.train_batch_size * self.args.gradient_accumulation_steps
            * self.args.world_size
        )
        return ShuffledLengthGroupedSampler(lengths, batch)

    def create_optimizer(self, model=None):
        if self._loraplus_lr_ratio and self.optimizer is None:
            from peft.optimizers import create_loraplus_optimizer

            self.optimizer = create_loraplus_optimizer(
                self.model,
                torch.optim.AdamW,
                lr=self.args.learning_rate,
                loraplus_lr_ratio=self._loraplus_lr_ratio,
                weight_decay=self.args.weight_decay,
            )
        return super().create_optimizer(model)


def load_model(config: TrainConfig, model_path: Path):
    """The base model (4-bit NF4 for qlora, LLM.int8 for load_in_8bit) wrapped in a fresh
    PEFT LoRA adapter."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, set_seed

    dtype = getattr(torch, config.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if config.adapter == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    elif config.load_in_8bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if config.adapter == "qlora" or config.load_in_8bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    set_seed(config.seed)  # LoRA A init
    peft_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        use_dora=config.use_dora,
        use_rslora=config.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def build_sft_config(config: TrainConfig, *, has_eval: bool, steps_per_epoch: int = 1):
    """Map our config onto TRL's ``SFTConfig`` (``steps_per_epoch`` turns Axolotl's
    saves_per_epoch / evals_per_epoch into step counts)."""
    from trl import SFTConfig

    # transformers >= 5 (the pyproject floor) reads a float < 1 in `warmup_steps` as a share
    # of the steps; its `warmup_ratio` is deprecated.
    warmup: float = 0
    if config.warmup_steps is not None:
        warmup = config.warmup_steps
    elif config.warmup_ratio is not None:
        warmup = config.warmup_ratio
    eval_steps = config.eval_steps
    if config.evals_per_epoch:
        eval_steps = max(1, steps_per_epoch // config.evals_per_epoch)
    save_steps = config.save_steps
    if config.saves_per_epoch:
        save_steps = max(1, steps_per_epoch // config.saves_per_epoch)
    periodic_eval = has_eval and eval_steps is not None
    early = config.early_stopping_patience is not None
    optimizer = {"optim": config.optimizer} if config.optimizer else {}
    return SFTConfig(
        output_dir=str(config.checkpoint_dir),
        per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=max(config.micro_batch_size, 8),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=warmup,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps or -1,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs=config.gradient_checkpointing_kwargs,
        **optimizer,
        bf16=config.dtype == "bfloat16",
        use_cpu=not torch.cuda.is_available(),  # else bf16 on a CPU-only machine is refused
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=eval_steps if early else save_steps,
        save_total_limit=2,
        eval_strategy="steps" if periodic_eval else "no",
        eval_steps=eval_steps if periodic_eval else None,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        seed=config.seed,
        data_seed=config.seed,
        report_to=config.report_to or "none",
        run_name=config.wandb.get("name") or config.name,
        disable_tqdm=True,  # our ProgressBarCallback replaces the default bar
        max_length=config.sequence_len,
        packing=config.sample_packing,
        eval_packing=False,  # held-out loss per row, packed training or not
        completion_only_loss=not config.train_on_inputs,
        # Rows of similar length share a batch: less padding, same data.
        train_sampling_strategy="random" if config.sample_packing else "group_by_length",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,  # no accelerator to pin for on CPU
    )
