"""``tuneserve train``: a dataset and a base model in, a served-ready adapter folder out.

A thin layer over TRL's ``SFTTrainer`` and PEFT (no hand-written loop): it validates the
data, tokenizes rows with :mod:`training.chat_format` (so ``<bos>`` appears once and the
loss covers the answer plus ``<end_of_turn>``), wraps the model in LoRA/QLoRA/DoRA/rsLoRA,
optionally uses a LoRA+ optimiser, and adds three speed/ops pieces by extension points:
the compact LM head (:mod:`training.lm_head`) and callbacks for the JSON-lines log, the
progress bar and cancellation. The adapter is written atomically with its manifest.
"""

from __future__ import annotations

import logging
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from training.callbacks import (
    CancelCallback,
    EventLog,
    JsonlLogCallback,
    ProgressBarCallback,
    ThroughputTracker,
)
from training.config import TrainConfig
from tuneserve.errors import UserError

log = logging.getLogger(__name__)


class TrainingCancelled(Exception):
    """The run was stopped by a signal or :meth:`CancelCallback.cancel`; no adapter written."""


@dataclass
class PreparedData:
    """Validated, split rows plus what the manifest records about them."""

    train: list[dict]
    held_out: list[dict]
    datasets: list[dict[str, Any]] = field(default_factory=list)
    held_out_indices: list[int] = field(default_factory=list)
    dropped_rows: int = 0
    # Held-out rows left out of held_out because a training row is an exact copy.
    held_out_duplicates: int = 0


def default_log_file(config: TrainConfig) -> Path:
    """``<output_dir>/<name>.train.jsonl``."""
    return config.adapter_root / f"{config.name}.train.jsonl"


def prepare_data(config: TrainConfig, tokenizer) -> PreparedData:
    """Load every dataset, validate (format, then length against ``sequence_len``), split.

    The split is taken on the format-validated rows, in dataset order, with
    ``training.data.split_rows(rows, val_set_size, seed)``, so anyone can reproduce it from
    the files alone. Raises UserError with a line-numbered report unless drop_invalid_rows.
    """
    from training.data import held_out_indices, with_system_prompt

    rows, infos, too_long = _load_specs(config, config.datasets, tokenizer)
    if not rows:
        raise UserError("no valid training rows")
    held = set(held_out_indices(len(rows), config.val_set_size, config.seed))
    if len(held) >= len(rows):
        raise UserError(f"val_set_size {config.val_set_size} leaves no training rows")
    rows = with_system_prompt(rows, config.system_prompt)
    train = [r for i, r in enumerate(rows) if i not in held and i not in too_long]
    held_out = [r for i, r in enumerate(rows) if i in held and i not in too_long]
    if not train:
        raise UserError("no training rows left after dropping invalid rows")
    if config.val_datasets:
        val_rows, val_infos, val_long = _load_specs(config, config.val_datasets, tokenizer)
        held_out = [
            r
            for i, r in enumerate(with_system_prompt(val_rows, config.system_prompt))
            if i not in val_long
        ]
        infos += [{**info, "role": "validation"} for info in val_infos]
    dropped = sum(info["invalid_rows"] for info in infos)
    held_out, duplicates = _without_training_rows(held_out, train)
    return PreparedData(train, held_out, infos, sorted(held), dropped, duplicates)


def _without_training_rows(held_out: list[dict], train: list[dict]) -> tuple[list[dict], int]:
    """Held-out rows minus exact copies of a training row (a dataset's duplicates would
    otherwise put trained-on rows into the evaluation set); returns them and the count."""
    from training.manifest import row_fingerprint

    trained = {row_fingerprint(r["messages"]) for r in train}
    kept = [r for r in held_out if row_fingerprint(r["messages"]) not in trained]
    return kept, len(held_out) - len(kept)


def _load_specs(config: TrainConfig, specs, tokenizer) -> tuple[list[dict], list[dict], set[int]]:
    """Rows of ``specs`` in order, manifest entries, and indices of too-long rows.

    Raises UserError with the line-numbered report unless drop_invalid_rows.
    """
    from training.data import check_lengths, file_sha256, load_rows

    rows: list[dict] = []
    infos: list[dict[str, Any]] = []
    too_long: set[int] = set()
    for spec in specs:
        report = load_rows(spec.path, spec.type, split=spec.split)
        offset = len(rows)
        valid = len(report.rows)
        rows.extend(report.rows)
        # Length errors are found after the split is fixed so they never shift it.
        length_report = _copy_report(report, config.system_prompt)
        check_lengths(length_report, tokenizer, config.sequence_len)
        long_lines = {e.line for e in length_report.errors} - {e.line for e in report.errors}
        too_long |= {offset + i for i, line in enumerate(report.lines) if line in long_lines}
        if length_report.errors and not config.drop_invalid_rows:
            raise UserError(
                f"dataset {spec.path} has invalid rows (set drop_invalid_rows: true to skip "
                "them):\n" + length_report.format_errors()
            )
        infos.append(
            {
                "path": str(spec.path),
                "type": report.format,
                "split": spec.split,
                "sha256": file_sha256(spec.path),
                "rows": valid,
                "invalid_rows": len(length_report.errors),
            }
        )
    return rows, infos, too_long


def _copy_report(report, system_prompt):
    from training.data import ValidationReport, with_system_prompt

    return ValidationReport(
        path=report.path,
        format=report.format,
        rows=with_system_prompt(list(report.rows), system_prompt),
        errors=list(report.errors),
        lines=list(report.lines),
    )


def tokenize_rows(rows: list[dict], tokenizer):
    """A ``datasets.Dataset`` of ``input_ids`` + ``completion_mask`` (TRL's processed form)."""
    import datasets

    from training.chat_format import encode_for_training

    return datasets.Dataset.from_list([encode_for_training(tokenizer, r["messages"]) for r in rows])


def load_model(config: TrainConfig, model_path: Path):
    """The base model (4-bit NF4 for qlora) wrapped in a fresh PEFT LoRA adapter."""
    import torch
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
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if config.adapter == "qlora":
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


def build_sft_config(config: TrainConfig, *, has_eval: bool):
    """Map our config onto TRL's ``SFTConfig``."""
    import torch
    from trl import SFTConfig

    # transformers >= 5 (the pyproject floor) reads a float < 1 in `warmup_steps` as a share
    # of the steps; its `warmup_ratio` is deprecated.
    warmup: float = 0
    if config.warmup_steps is not None:
        warmup = config.warmup_steps
    elif config.warmup_ratio is not None:
        warmup = config.warmup_ratio
    periodic_eval = has_eval and config.eval_steps is not None
    early = config.early_stopping_patience is not None
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
        bf16=config.dtype == "bfloat16",
        use_cpu=not torch.cuda.is_available(),  # else bf16 on a CPU-only machine is refused
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.eval_steps if early else config.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if periodic_eval else "no",
        eval_steps=config.eval_steps if periodic_eval else None,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,  # our ProgressBarCallback replaces the default bar
        max_length=config.sequence_len,
        packing=config.sample_packing,
        completion_only_loss=not config.train_on_inputs,
        # Rows of similar length share a batch: less padding, same data.
        train_sampling_strategy="random" if config.sample_packing else "group_by_length",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,  # no accelerator to pin for on CPU
    )


def _trainer_class():
    import torch
    from peft import PeftModel
    from trl import SFTTrainer

    from training.lm_head import add_compact_lm_head
    from training.sampling import ShuffledLengthGroupedSampler

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
            if compact_lm_head:
                model = self.model
                add_compact_lm_head(
                    model.get_base_model() if isinstance(model, PeftModel) else model
                )

        def _get_train_sampler(self, train_dataset=None):
            """Length-grouped batches in shuffled order (training/sampling.py says why)."""
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
                return super()._get_train_sampler(train_dataset)
            lengths = [len(ids) for ids in dataset["input_ids"]]
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
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

    return AdapterSFTTrainer


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` whose ``trainer_state.json`` (saved last) exists, so a
    run killed while writing a checkpoint resumes from the one before."""
    complete = [
        p
        for p in checkpoint_dir.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    if not complete:
        return None
    return str(max(complete, key=lambda p: int(p.name.split("-")[-1])))


def base_checkpoint_hash(model_path: Path) -> str | None:
    """The prepared model's recorded weights hash, else sha256 of its safetensors."""
    import json

    from training.base_models import PREPARED_MARKER
    from training.data import file_sha256

    marker = model_path / PREPARED_MARKER
    if marker.is_file():
        recorded = json.loads(marker.read_text()).get("weights_sha256")
        if recorded:
            return recorded
    weights = sorted(model_path.glob("*.safetensors"))
    return file_sha256(weights[0]) if len(weights) == 1 else None


def train(
    config: TrainConfig,
    *,
    callbacks: Sequence[TrainerCallback] = (),
    log_file: Path | None = None,
    cancel: CancelCallback | None = None,
    progress_bar: bool | None = None,
) -> Path:
    """Train ``config``; return the adapter folder (``output_dir/NAME``).

    Progress goes to the JSON-lines ``log_file`` (default ``<output_dir>/<name>.train.jsonl``).
    Raises UserError for bad input, TrainingCancelled when ``cancel`` fired (nothing is
    written then; checkpoints stay for ``resume_from_checkpoint``).
    """
    events = EventLog(log_file or default_log_file(config))
    events.write("status", message=f"starting {config.name}")
    try:
        return _train(config, events, list(callbacks), cancel or CancelCallback(), progress_bar)
    except TrainingCancelled as exc:
        events.write("error", message=f"cancelled: {exc}")
        raise
    except UserError as exc:
        events.write("error", message=str(exc))
        raise
    except Exception as exc:
        events.write("error", message=f"{type(exc).__name__}: {exc}")
        raise


def _train(config, events: EventLog, callbacks, cancel: CancelCallback, progress_bar) -> Path:
    import datasets
    import torch
    from transformers import AutoTokenizer, EarlyStoppingCallback, PrinterCallback

    from training.base_models import resolve_model_path
    from training.manifest import library_versions, staging_dir, write_adapter_files

    started = time.monotonic()
    datasets.disable_progress_bars()  # one progress bar (ours) is enough
    model_path = resolve_model_path(config.base_model)
    target = config.adapter_path
    if target.exists() and not config.overwrite:
        raise UserError(
            f"adapter {target} already exists (set overwrite: true or pick another name)"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    events.write("status", message="validating data")
    data = prepare_data(config, tokenizer)
    events.write(
        "status",
        message=f"data: {len(data.train)} train rows, {len(data.held_out)} held-out rows, "
        f"{data.dropped_rows} dropped"
        + (f", {data.held_out_duplicates} held-out rows left out as copies of training rows"
           if data.held_out_duplicates else ""),
    )
    train_ds = tokenize_rows(data.train, tokenizer)
    eval_rows = data.held_out[: config.eval_max_rows] if config.eval_max_rows else data.held_out
    eval_ds = tokenize_rows(eval_rows, tokenizer) if eval_rows else None

    events.write("status", message=f"loading {config.base_model} ({config.adapter})")
    torch.manual_seed(config.seed)
    model = load_model(config, model_path)
    trainable, total = model.get_nb_trainable_parameters()

    throughput = ThroughputTracker()
    jsonl = JsonlLogCallback(events, throughput)
    all_callbacks = [cancel, jsonl, ProgressBarCallback(throughput, progress_bar), *callbacks]
    if config.early_stopping_patience:
        all_callbacks.append(EarlyStoppingCallback(config.early_stopping_patience))
    trainer = _trainer_class()(
        model=model,
        args=build_sft_config(config, has_eval=eval_ds is not None),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=all_callbacks,
        compact_lm_head=config.compact_lm_head,
        loraplus_lr_ratio=config.loraplus_lr_ratio,
    )

    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; we have our own bar

    resume = None
    if config.resume_from_checkpoint and config.checkpoint_dir.is_dir():
        resume = last_complete_checkpoint(config.checkpoint_dir)
    elif config.checkpoint_dir.exists():
        shutil.rmtree(config.checkpoint_dir)  # stale checkpoints of an earlier run
    events.write("status", message=f"resuming from {resume}" if resume else "training")

    cancel.install_signal_handlers()
    try:
        train_started = time.monotonic()
        result = trainer.train(resume_from_checkpoint=resume)
        train_seconds = time.monotonic() - train_started
        if cancel.cancelled.is_set():
            raise TrainingCancelled(cancel.signal_name or "cancelled")
        metrics: dict[str, Any] = {"train_loss": result.training_loss}
        if eval_ds is not None and not cancel.cancelled.is_set():
            events.write("status", message="evaluating held-out loss")
            eval_metrics = trainer.evaluate()
            metrics["eval_loss"] = eval_metrics.get("eval_loss")
        if cancel.cancelled.is_set():
            raise TrainingCancelled(cancel.signal_name or "cancelled")
    finally:
        cancel.restore_signal_handlers()

    state = trainer.state
    trained_tokens = int(trainer._total_train_tokens) or throughput.trained_tokens
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    manifest = {
        "name": config.name,
        "kind": "adapter",
        "adapter": config.adapter,
        "servable_by_vllm": not config.use_dora,
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
        "wall_seconds": round(time.monotonic() - started, 1),
        "tokens_per_s": round(trained_tokens / train_seconds, 1) if train_seconds else None,
        "peak_memory_mb": round(peak_rss_mb, 1),
        "loss_curve": jsonl.loss_curve,
        "eval_curve": jsonl.eval_curve,
        "metrics": metrics,
        "resumed_from": resume,
        "libraries": library_versions(),
        "python": sys.version.split()[0],
        "created_at": events.events[0]["time"],
    }
    with staging_dir(target, overwrite=config.overwrite) as tmp:
        write_adapter_files(tmp, trainer.model.save_pretrained, manifest, data.held_out,
                            data.train)
    shutil.rmtree(config.checkpoint_dir, ignore_errors=True)
    events.write(
        "done",
        step=state.global_step,
        total_steps=state.max_steps,
        epoch=state.epoch,
        loss=result.training_loss,
        eval_loss=metrics.get("eval_loss"),
        trained_tokens=trained_tokens,
        tokens_per_s=manifest["tokens_per_s"],
        message=str(target),
    )
    return target
