"""Trainer callbacks: JSON-lines event log, progress bar, cancellation on a signal.

The run is TRL's/transformers' own loop; these only observe it (and ask it to stop).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class EventLog:
    """Appends one JSON object per event to a ``.jsonl`` file (for the UI's loss plot).

    With ``write_file=False`` (the non-main ranks of a multi-process run) events are only
    kept in memory: one process owns the file.
    """

    def __init__(self, path: Path, *, write_file: bool = True):
        self.path = Path(path)
        self.write_file = write_file
        if write_file:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.events: list[dict[str, Any]] = []

    def write(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"time": _now(), "type": type}
        event.update({k: v for k, v in fields.items() if v is not None})
        self.events.append(event)
        if not self.write_file:
            return event
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")
        return event


class ThroughputTracker:
    """Trained tokens and tokens/s, fed from TRL's ``num_tokens`` log entry."""

    def __init__(self) -> None:
        self.trained_tokens = 0
        self.start = time.monotonic()
        self._last_tokens = 0
        self._last_time = self.start
        self.tokens_per_s: float | None = None

    def update(self, num_tokens: float | None) -> None:
        if num_tokens is None:
            return
        now = time.monotonic()
        self.trained_tokens = int(num_tokens)
        dt = now - self._last_time
        if dt > 0 and self.trained_tokens > self._last_tokens:
            self.tokens_per_s = (self.trained_tokens - self._last_tokens) / dt
        self._last_tokens, self._last_time = self.trained_tokens, now

    def average(self) -> float | None:
        elapsed = time.monotonic() - self.start
        return self.trained_tokens / elapsed if elapsed > 0 and self.trained_tokens else None


class JsonlLogCallback(TrainerCallback):
    """Writes ``progress`` and ``eval`` events (contract fields) to the event log."""

    def __init__(self, log: EventLog, throughput: ThroughputTracker):
        self.log = log
        self.throughput = throughput
        self.loss_curve: list[dict[str, Any]] = []
        self.eval_curve: list[dict[str, Any]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        epoch = round(state.epoch, 4) if state.epoch is not None else None
        if "eval_loss" in logs:
            point = {"step": state.global_step, "eval_loss": logs["eval_loss"]}
            self.eval_curve.append(point)
            self.log.write(
                "eval",
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=epoch,
                eval_loss=logs["eval_loss"],
            )
        elif "loss" in logs:
            self.throughput.update(logs.get("num_tokens"))
            point = {"step": state.global_step, "loss": logs["loss"]}
            self.loss_curve.append(point)
            self.log.write(
                "progress",
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=epoch,
                loss=logs["loss"],
                learning_rate=logs.get("learning_rate"),
                tokens_per_s=_round(self.throughput.tokens_per_s),
                trained_tokens=self.throughput.trained_tokens,
            )


class ProgressBarCallback(TrainerCallback):
    """A tqdm bar (step, ETA) with the latest loss and tokens/s; silent when not a TTY."""

    def __init__(self, throughput: ThroughputTracker, enabled: bool | None = None):
        self.throughput = throughput
        self.enabled = enabled
        self.bar = None
        self._postfix: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        # disable=None: tqdm turns itself off when stderr is not a terminal (job workers).
        self.bar = tqdm(
            total=state.max_steps,
            initial=state.global_step,
            desc="training",
            unit="step",
            disable=None if self.enabled is None else not self.enabled,
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            self._postfix["loss"] = f"{logs['loss']:.4f}"
        if self.throughput.tokens_per_s:
            self._postfix["tok/s"] = f"{self.throughput.tokens_per_s:.0f}"
        if "eval_loss" in logs:
            self._postfix["eval_loss"] = f"{logs['eval_loss']:.4f}"
        self.bar.set_postfix(self._postfix, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class CancelCallback(TrainerCallback):
    """Stops training at the next step boundary once :meth:`cancel` was called.

    :meth:`install_signal_handlers` routes SIGTERM/SIGINT here (main thread only); a
    second signal raises KeyboardInterrupt at once for a user who insists.
    """

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def cancel(self, reason: str = "cancelled") -> None:
        self.signal_name = self.signal_name or reason
        self.cancelled.set()

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore_signal_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.cancelled.is_set():
            raise KeyboardInterrupt
        self.cancel(signal.Signals(signum).name)

    def _check(self, control):
        if self.cancelled.is_set():
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False
        return control

    def on_step_end(self, args, state, control, **kwargs):
        return self._check(control)

    def on_substep_end(self, args, state, control, **kwargs):
        return self._check(control)


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None
