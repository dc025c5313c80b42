"""The TRL trainer, the PEFT model and the ``SFTConfig`` a :class:`TrainConfig` maps onto.

``AdapterSFTTrainer`` is TRL's ``SFTTrainer`` plus our hooks (compact LM head, LoRA+,
LoRA-FA, length-grouped sampling); :func:`peft_config` is the one place a config's
``adapter`` becomes PEFT's own config (``None`` for full fine-tuning). Importing this module
imports torch, TRL and PEFT.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import TrainerCallback
from trl import SFTTrainer

from training.config import (
    LORA_FAMILY,
    AdaLoraOptions,
    PrefixTuningOptions,
    PromptTuningOptions,
    TrainConfig,
    VeraOptions,
)
from training.lm_head import add_compact_lm_head, compact_head_unsupported
from training.sampling import ShuffledLengthGroupedSampler

log = logging.getLogger(__name__)


class AdapterSFTTrainer(SFTTrainer):
    """``SFTTrainer`` plus hooks: the compact LM head and the LoRA+ / LoRA-FA optimisers."""

    def __init__(
        self,
        *args,
        compact_lm_head: bool = True,
        loraplus_lr_ratio: float | None = None,
        lorafa: tuple[int, int] | None = None,
        **kwargs,
    ):
        self._loraplus_lr_ratio = loraplus_lr_ratio
        self._lorafa = lorafa  # (r, lora_alpha) of a LoRA-FA run
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
        if self.optimizer is None:
            self.optimizer = method_optimizer(
                self.model, self.args, loraplus_lr_ratio=self._loraplus_lr_ratio,
                lorafa=self._lorafa,
            )
        return super().create_optimizer(model)


def lorafa_args(config: TrainConfig) -> tuple[int, int] | None:
    """(r, lora_alpha) for a LoRA-FA run's optimiser; None for every other method."""
    return (config.lora_r, config.lora_alpha) if config.adapter == "lora_fa" else None


def method_optimizer(model, args, *, loraplus_lr_ratio=None, lorafa=None):
    """PEFT's optimiser for LoRA+ (B learns ``ratio`` x faster) or LoRA-FA (A frozen, B's
    gradient projected; ``lorafa`` = (r, lora_alpha)); None = the trainer's own."""
    if lorafa:
        from peft.optimizers import create_lorafa_optimizer

        r, alpha = lorafa
        return create_lorafa_optimizer(
            model, r=r, lora_alpha=alpha, lr=args.learning_rate, weight_decay=args.weight_decay
        )
    if loraplus_lr_ratio:
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model,
            torch.optim.AdamW,
            lr=args.learning_rate,
            loraplus_lr_ratio=loraplus_lr_ratio,
            weight_decay=args.weight_decay,
        )
    return None


def load_base_model(config: TrainConfig, model_path: Path):
    """The base model: 4-bit NF4 for qlora, LLM.int8 for load_in_8bit, else ``dtype``."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

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
    return model


def peft_config(config: TrainConfig, model_path: Path, total_steps: int = 1):
    """PEFT's own config for ``config.adapter`` (None for ``full``): the one mapping from
    our keys to PEFT's. ``total_steps`` is AdaLoRA's rank-budget schedule length."""
    from peft import (
        AdaLoraConfig,
        IA3Config,
        LoraConfig,
        PrefixTuningConfig,
        PromptTuningConfig,
        PromptTuningInit,
        VeraConfig,
    )

    task = "CAUSAL_LM"
    method = config.adapter
    if method in LORA_FAMILY:
        return LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            use_dora=config.use_dora,
            use_rslora=config.use_rslora,
            bias="none",
            task_type=task,
        )
    if method == "vera":
        o = config.vera or VeraOptions()
        return VeraConfig(
            r=o.r,
            d_initial=o.d_initial,
            vera_dropout=o.vera_dropout,
            projection_prng_key=o.projection_prng_key,
            save_projection=True,  # the adapter file is self-contained
            target_modules=config.lora_target_modules,
            task_type=task,
        )
    if method == "adalora":
        o = config.adalora or AdaLoraOptions()
        if o.tinit + o.tfinal >= total_steps:
            from tuneserve.errors import UserError

            raise UserError(
                f"adalora.tinit + adalora.tfinal ({o.tinit + o.tfinal}) must be below the run's "
                f"{total_steps} steps (AdaLoRA prunes ranks between them)"
            )
        return AdaLoraConfig(
            init_r=o.init_r,
            target_r=o.target_r,
            tinit=o.tinit,
            tfinal=o.tfinal,
            deltaT=o.deltaT,
            beta1=o.beta1,
            beta2=o.beta2,
            # PEFT adds its orthogonality regulariser to `outputs.loss`, which TRL's loss
            # (from per-token log-probs) never reads: off, rather than set and unused.
            orth_reg_weight=0.0,
            total_step=total_steps,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            task_type=task,
        )
    if method == "ia3":
        o = config.ia3
        return IA3Config(
            target_modules=o.target_modules if o else None,  # None: PEFT's default for the model
            feedforward_modules=o.feedforward_modules if o else None,
            task_type=task,
        )
    if method == "prompt_tuning":
        o = config.prompt_tuning or PromptTuningOptions()
        return PromptTuningConfig(
            num_virtual_tokens=o.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if o.init_text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=o.init_text,
            tokenizer_name_or_path=str(model_path) if o.init_text else None,
            task_type=task,
        )
    if method == "prefix_tuning":
        o = config.prefix_tuning or PrefixTuningOptions()
        return PrefixTuningConfig(
            num_virtual_tokens=o.num_virtual_tokens,
            prefix_projection=o.prefix_projection,
            encoder_hidden_size=o.encoder_hidden_size,
            task_type=task,
        )
    if method == "full":
        return None
    raise AssertionError(f"no PEFT config for adapter {method!r}")


def load_model(config: TrainConfig, model_path: Path, total_steps: int = 1):
    """The base model wrapped in a fresh PEFT adapter of ``config.adapter`` (the base model
    itself, every weight trainable, for ``full``)."""
    from peft import get_peft_model
    from transformers import set_seed

    model = load_base_model(config, model_path)
    set_seed(config.seed)  # adapter init (LoRA A, VeRA projections, soft prompts)
    peft = peft_config(config, model_path, total_steps)
    if peft is None:
        return model
    return get_peft_model(model, peft)


class AdaLoraBudgetCallback(TrainerCallback):
    """AdaLoRA's rank reallocation, which PEFT needs called after every optimiser step
    (before the gradients are zeroed): ``update_and_allocate(global_step)``."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        peft_model = model.module if hasattr(model, "module") else model
        peft_model.base_model.update_and_allocate(state.global_step)


def training_arguments(config: TrainConfig, *, has_eval: bool, steps_per_epoch: int = 1):
    """The transformers ``TrainingArguments`` keys every trainer here shares (SFT, DPO,
    ORPO); ``steps_per_epoch`` turns Axolotl's saves_per_epoch / evals_per_epoch into steps."""
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
    return dict(
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
        dataloader_num_workers=0,
        dataloader_pin_memory=False,  # no accelerator to pin for on CPU
    )


def build_sft_config(config: TrainConfig, *, has_eval: bool, steps_per_epoch: int = 1):
    """Map our config onto TRL's ``SFTConfig``."""
    from trl import SFTConfig

    return SFTConfig(
        **training_arguments(config, has_eval=has_eval, steps_per_epoch=steps_per_epoch),
        packing=config.sample_packing,
        eval_packing=False,  # held-out loss per row, packed training or not
        completion_only_loss=not config.train_on_inputs,
        # Rows of similar length share a batch: less padding, same data.
        train_sampling_strategy="random" if config.sample_packing else "group_by_length",
    )


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters: PEFT's own count for a PEFT model, else the sums."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
