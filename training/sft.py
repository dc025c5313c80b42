"""``tuneserve train``: a dataset and a base model in, a served-ready adapter folder out.

A thin layer over TRL's ``SFTTrainer`` and PEFT (no hand-written loop): it validates the
data, tokenizes rows with :mod:`training.chat_format` (so ``<bos>`` appears once and the
loss covers the answer plus ``<end_of_turn>``), wraps the model in the PEFT method of
``adapter`` (LoRA/QLoRA/DoRA/rsLoRA/LoRA-FA/VeRA/AdaLoRA/IA3/prompt/prefix tuning, or none
for full fine-tuning), optionally uses a LoRA+ or LoRA-FA optimiser, hands preference pairs
(``rl: dpo | orpo``) to TRL's DPO/ORPO trainers (:mod:`training.preference`), and adds three speed/ops pieces by extension points:
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
from training.distributed import is_main_process, wait_for_everyone
from tuneserve.errors import UserError

log = logging.getLogger(__name__)


class TrainingCancelled(Exception):
    """The run was stopped by a signal or :meth:`CancelCallback.cancel`; no adapter written."""


def default_log_file(config: TrainConfig) -> Path:
    """``<output_dir>/<name>.train.jsonl``."""
    return config.adapter_root / f"{config.name}.train.jsonl"


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

    Under a multi-process launcher every rank calls this; only the main process writes
    the log, the adapter and the manifest (training/distributed.py).
    """
    events = EventLog(log_file or default_log_file(config), write_file=is_main_process())
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
    from training.config import NO_COMPACT_HEAD
    from training.data import configure_tokenizer, estimate, prepare_data, tokenize_rows
    from training.manifest import build_manifest, staging_dir, write_adapter_files
    from training.trainer import (
        AdaLoraBudgetCallback,
        AdapterSFTTrainer,
        build_sft_config,
        load_model,
        lorafa_args,
    )

    started = time.monotonic()
    datasets.disable_progress_bars()  # one progress bar (ours) is enough
    model_path = resolve_model_path(config.base_model)
    target = config.adapter_path
    if target.exists() and not config.overwrite:
        raise UserError(
            f"adapter {target} already exists (set overwrite: true or pick another name)"
        )
    resume_path = config.resume_from_checkpoint
    if isinstance(resume_path, str) and not (Path(resume_path) / "trainer_state.json").is_file():
        raise UserError(
            f"resume_from_checkpoint {resume_path} is not a checkpoint folder "
            "(no trainer_state.json)"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    configure_tokenizer(config, tokenizer)
    for note in config.notes:
        events.write("status", message=f"warning: {note}")

    events.write("status", message="validating data")
    data = prepare_data(config, tokenizer)
    work = estimate(config, data)
    too_long = sum(info.get("too_long_rows", 0) for info in data.datasets)
    events.write(
        "status",
        message=f"data: {len(data.train)} train rows, {len(data.held_out)} held-out rows, "
        f"{data.dropped_rows} dropped"
        + (f" ({too_long} longer than sequence_len {config.sequence_len})" if too_long else "")
        + (
            f", {data.held_out_duplicates} held-out rows left out as copies of training rows"
            if data.held_out_duplicates
            else ""
        )
        + (
            f", {data.duplicate_rows} duplicate training rows "
            + ("dropped" if data.deduplicated else "kept (dataset_exact_deduplication drops them)")
            if data.duplicate_rows
            else ""
        ),
    )
    events.write(
        "status",
        message=f"estimate: {work['steps']} steps, {work['tokens']} tokens"
        + (
            f", about {work['seconds']} s at the speed of {work['tokens_per_s_from']}"
            if work["seconds"]
            else ""
        ),
    )
    eot = tuple(config.eot_tokens)
    eval_rows = data.held_out[: config.eval_max_rows] if config.eval_max_rows else data.held_out
    if config.rl is None:  # preference pairs are tokenized by TRL's DPO/ORPO trainers
        train_ds = tokenize_rows(data.train, tokenizer, eot)
        eval_ds = tokenize_rows(eval_rows, tokenizer, eot) if eval_rows else None
    has_eval = bool(eval_rows)

    main = is_main_process()
    if progress_bar is not False and main:  # the data summary and estimate, before compute is spent
        from tqdm import tqdm

        for event in events.events[-2:]:
            tqdm.write(event["message"], file=sys.stderr)  # the progress bar's own channel
    method = config.adapter + (f" + {config.rl}" if config.rl else "")
    events.write("status", message=f"loading {config.base_model} ({method})")
    torch.manual_seed(config.seed)

    throughput = ThroughputTracker()
    jsonl = JsonlLogCallback(events, throughput)
    bar = ProgressBarCallback(throughput, progress_bar if main else False)
    all_callbacks = [cancel, jsonl, bar, *callbacks]
    if config.early_stopping_patience:
        all_callbacks.append(EarlyStoppingCallback(config.early_stopping_patience))
    if config.adapter == "adalora":
        all_callbacks.append(AdaLoraBudgetCallback())
    compact = config.compact_lm_head and config.adapter not in NO_COMPACT_HEAD and not config.rl
    if config.compact_lm_head and not compact:
        why = (f"rl: {config.rl} scores answers with TRL's own fused head" if config.rl else
               f"{config.adapter} changes the sequence the head sees")
        events.write("status", message=f"compact LM head off: {why}")
    if config.rl:
        from training.preference import build_preference_trainer

        trainer = build_preference_trainer(
            config, model_path, tokenizer=tokenizer, train_rows=data.train,
            eval_rows=eval_rows, callbacks=all_callbacks,
            steps_per_epoch=work["steps_per_epoch"], total_steps=work["steps"],
        )
    else:
        trainer = AdapterSFTTrainer(
            model=load_model(config, model_path, total_steps=work["steps"]),
            args=build_sft_config(
                config, has_eval=has_eval, steps_per_epoch=work["steps_per_epoch"]
            ),
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            callbacks=all_callbacks,
            compact_lm_head=compact,
            loraplus_lr_ratio=config.loraplus_lr_ratio,
            lorafa=lorafa_args(config),
        )

    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; we have our own bar

    resume = None
    if isinstance(config.resume_from_checkpoint, str):
        resume = config.resume_from_checkpoint  # a checkpoint folder named in the config
    elif config.resume_from_checkpoint and config.checkpoint_dir.is_dir():
        resume = last_complete_checkpoint(config.checkpoint_dir)
    elif config.checkpoint_dir.exists() and main:
        shutil.rmtree(config.checkpoint_dir)  # stale checkpoints of an earlier run
    wait_for_everyone()  # no rank saves a checkpoint into a folder being removed
    events.write("status", message=f"resuming from {resume}" if resume else "training")

    cancel.install_signal_handlers()
    try:
        train_started = time.monotonic()
        result = trainer.train(resume_from_checkpoint=resume)
        train_seconds = time.monotonic() - train_started
        if cancel.cancelled.is_set():
            raise TrainingCancelled(cancel.signal_name or "cancelled")
        metrics: dict[str, Any] = {"train_loss": result.training_loss}
        if has_eval and not cancel.cancelled.is_set():
            events.write("status", message="evaluating held-out loss")
            eval_metrics = trainer.evaluate()
            metrics["eval_loss"] = eval_metrics.get("eval_loss")
        if cancel.cancelled.is_set():
            raise TrainingCancelled(cancel.signal_name or "cancelled")
    finally:
        cancel.restore_signal_handlers()

    # FSDP / ZeRO-3 shard the adapter too: gathering it is a collective every rank joins
    # (the full dict lands on the main process). DDP and one process save it as it is.
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if sharded else None
    if not main:
        wait_for_everyone()  # until the main process has published the adapter
        return target
    state = trainer.state
    trained_tokens = int(getattr(trainer, "_total_train_tokens", 0)) or throughput.trained_tokens
    manifest = build_manifest(
        config,
        model_path=model_path,
        data=data,
        trainer=trainer,
        jsonl=jsonl,
        metrics=metrics,
        resume=resume,
        train_seconds=train_seconds,
        wall_seconds=time.monotonic() - started,
        trained_tokens=trained_tokens,
        peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        created_at=events.events[0]["time"],
    )
    with staging_dir(target, overwrite=config.overwrite) as tmp:
        write_adapter_files(tmp, _saver(trainer, tokenizer, config, state_dict), manifest,
                            [as_chat(r) for r in data.held_out], data.train)
    shutil.rmtree(config.checkpoint_dir, ignore_errors=True)
    wait_for_everyone()
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


def as_chat(row: dict) -> dict:
    """A held-out row as the evaluation harness reads it: a preference pair becomes its
    prompt and preferred answer (the answer an evaluation should expect)."""
    from training.formats import is_preference, preference_conversations

    return {"messages": preference_conversations(row)[0]} if is_preference(row) else row


def _saver(trainer, tokenizer, config, state_dict=None):
    """Writes the trained weights: PEFT's adapter files, or for ``full`` the whole model
    with its tokenizer (a checkpoint that loads on its own). ``state_dict``: the weights
    gathered from a sharded (FSDP / ZeRO-3) run, else the model's own."""
    def save(folder: Path) -> None:
        if state_dict is not None:
            trainer.model.save_pretrained(folder, state_dict=state_dict)
        else:
            trainer.model.save_pretrained(folder)
        if config.adapter == "full":
            tokenizer.save_pretrained(folder)

    return save
