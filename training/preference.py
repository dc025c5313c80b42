"""Preference training (``rl: dpo | orpo``): TRL's ``DPOTrainer`` / ``ORPOTrainer``.

Rows are preference pairs (:func:`training.formats.preference_conversations`), passed to TRL
in its conversational form (``prompt`` / ``chosen`` / ``rejected`` message lists), so TRL
applies the base model's chat template itself. The PEFT adapter is TRL's to build from
:func:`training.trainer.peft_config` (for DPO the reference model is then the base with
the adapter switched off; for ``full`` TRL loads a frozen copy of the base).
Importing this module imports torch, TRL and PEFT.
"""

from __future__ import annotations

from pathlib import Path

from training.config import DEFAULT_RL_BETA, TrainConfig
from training.trainer import (
    load_base_model,
    lorafa_args,
    method_optimizer,
    peft_config,
    training_arguments,
)


def preference_dataset(rows: list[dict]):
    """A ``datasets.Dataset`` of TRL's conversational preference rows."""
    import datasets

    return datasets.Dataset.from_list(
        [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    )


def build_preference_trainer(
    config: TrainConfig,
    model_path: Path,
    *,
    tokenizer,
    train_rows: list[dict],
    eval_rows: list[dict],
    callbacks: list,
    steps_per_epoch: int,
    total_steps: int,
):
    """The DPO or ORPO trainer for ``config`` (``config.rl`` set), ready to ``train()``."""
    from transformers import set_seed

    common = training_arguments(
        config, has_eval=bool(eval_rows), steps_per_epoch=steps_per_epoch
    )
    beta = config.rl_beta if config.rl_beta is not None else DEFAULT_RL_BETA
    model = load_base_model(config, model_path)
    set_seed(config.seed)
    peft = peft_config(config, model_path, total_steps)
    train_ds = preference_dataset(train_rows)
    eval_ds = preference_dataset(eval_rows) if eval_rows else None
    if config.rl == "dpo":
        from trl import DPOConfig as ArgsClass
        from trl import DPOTrainer as TrainerClass
    else:
        from trl.experimental.orpo import ORPOConfig as ArgsClass
        from trl.experimental.orpo import ORPOTrainer as TrainerClass
    trainer = TrainerClass(
        model=model,
        args=ArgsClass(**common, beta=beta),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=peft,
    )
    trainer.optimizer = method_optimizer(
        trainer.model, trainer.args, loraplus_lr_ratio=config.loraplus_lr_ratio,
        lorafa=lorafa_args(config),
    )
    return trainer
