"""The Train tab's logic: presets, the job request, and the loss curve from job events.

Jobs go through the OpenAI-style fine-tuning API (``/v1/fine_tuning/jobs``); LoRA
settings ride in ``method.supervised.hyperparameters`` next to OpenAI's own keys (the
server maps them onto its training config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class Preset:
    """A named bundle of hyperparameters sized for a purpose."""

    description: str
    hyperparameters: dict[str, Any]


PRESETS: dict[str, Preset] = {
    "smoke (5 steps, LoRA r=8)": Preset(
        "About a minute on a CPU: checks the data and the loop end to end, not quality.",
        {
            "n_epochs": 1,
            "batch_size": 4,
            "max_steps": 5,
            "lora_rank": 8,
            "lora_alpha": 16,
            "sequence_len": 128,
            "logging_steps": 1,
        },
    ),
    "quick (60 steps, LoRA r=16)": Preset(
        "A first useful adapter on short rows (e.g. NL -> docker commands) in minutes.",
        {
            "n_epochs": 1,
            "batch_size": 4,
            "max_steps": 60,
            "lora_rank": 16,
            "lora_alpha": 32,
            "learning_rate_multiplier": 5.0,
            "sequence_len": 256,
            "logging_steps": 2,
        },
    ),
    "cpu-small (1 epoch, LoRA r=16)": Preset(
        "One pass over the data with a mid-size LoRA; fine for a few thousand short rows.",
        {"n_epochs": 1, "batch_size": 8, "lora_rank": 16, "lora_alpha": 32},
    ),
    "standard (3 epochs, LoRA r=16)": Preset(
        "The usual hosted-service default: three epochs.",
        {"n_epochs": 3, "batch_size": 8, "lora_rank": 16, "lora_alpha": 32},
    ),
    "qlora (3 epochs, 4-bit base, r=16)": Preset(
        "QLoRA: 4-bit NF4 base, less memory, slower on CPU.",
        {"n_epochs": 3, "batch_size": 8, "lora_rank": 16, "lora_alpha": 32, "qlora": True},
    ),
}


def job_request(
    *,
    model: str,
    training_file: str,
    preset: str,
    suffix: str | None = None,
    seed: int | None = None,
    learning_rate_multiplier: float | None = None,
) -> dict[str, Any]:
    """The body of ``POST /v1/fine_tuning/jobs`` for a preset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; pick one of: {', '.join(PRESETS)}")
    hyperparameters = dict(PRESETS[preset].hyperparameters)
    if learning_rate_multiplier:  # a user's value wins over the preset's
        hyperparameters["learning_rate_multiplier"] = float(learning_rate_multiplier)
    body: dict[str, Any] = {
        "model": model,
        "training_file": training_file,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    }
    if suffix and suffix.strip():
        body["suffix"] = suffix.strip()
    if seed is not None:
        body["seed"] = int(seed)
    return body


def loss_frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    """Long-format loss curve (``step``, ``loss``, ``series``) from metrics events."""
    rows = []
    for event in events:
        data = event.get("data") or {}
        if not isinstance(data, dict) or data.get("step") is None:
            continue
        for key, series in (("train_loss", "train"), ("valid_loss", "validation")):
            if data.get(key) is not None:
                rows.append({"step": int(data["step"]), "loss": float(data[key]), "series": series})
    frame = pd.DataFrame(rows, columns=["step", "loss", "series"])
    return frame.drop_duplicates(subset=["step", "series"], keep="last")


def progress_text(job: dict[str, Any], events: list[dict[str, Any]], server: str = "") -> str:
    """Markdown: status, step x/y, the latest loss and message, the served model when done,
    then the automatic evaluation's verdict (report links made absolute with ``server``)."""
    status = job.get("status", "unknown")
    lines = [f"**Job `{job.get('id', '?')}`**: {status}"]
    latest = next(
        (
            e.get("data")
            for e in reversed(events)
            if isinstance(e.get("data"), dict) and e["data"].get("step") is not None
        ),
        None,
    )
    if latest:
        step, total = latest.get("step"), latest.get("total_steps")
        bar = f"step {step}/{total}" if total else f"step {step}"
        if total:
            bar += f" ({100 * int(step) / max(int(total), 1):.0f}%)"
        if latest.get("train_loss") is not None:
            bar += f" · loss {float(latest['train_loss']):.4f}"
        if latest.get("tokens_per_s"):
            bar += f" · {float(latest['tokens_per_s']):.0f} tokens/s"
        lines.append(bar)
    if events:
        lines.append(f"_{events[-1].get('message', '')}_")
    if status == "succeeded" and job.get("fine_tuned_model"):
        lines.append(f"✅ Served as **{job['fine_tuned_model']}**: pick it in the Compare tab.")
        lines.extend(verdict_lines(job.get("evaluation") or {}, server))
    error = job.get("error")
    if status == "failed" and error:
        message = error.get("message") if isinstance(error, dict) else str(error)
        lines.append(f"❌ {message}")
    return "\n\n".join(lines)


def evaluation_running(job: dict[str, Any]) -> bool:
    """Whether the server is still evaluating a succeeded job's adapter (keep polling)."""
    return (job.get("evaluation") or {}).get("status") in ("pending", "running")


def verdict_lines(evaluation: dict[str, Any], server: str = "") -> list[str]:
    """The automatic evaluation as Markdown lines: figures with the CI, verdict, promotion."""
    status = evaluation.get("status")
    if status in ("pending", "running"):
        rows = evaluation.get("rows")
        return [f"⏳ Evaluating against the base on {rows or 'the'} held-out rows…"]
    if status == "skipped":
        return [f"ℹ️ Not evaluated: {evaluation.get('reason', 'no held-out rows')}."]
    if status == "failed":
        return [f"⚠️ Evaluation failed: {evaluation.get('error', 'unknown error')}"]
    if status != "done":
        return []
    decision = evaluation.get("decision") or {}
    metric, vs = decision.get("metric", "?"), decision.get("vs_base") or {}
    figures = (evaluation.get("figures") or {}).get("models") or {}
    base = (figures.get("base") or {}).get(metric)
    tuned = (figures.get("candidate") or {}).get(metric)
    scores = f"base {base:.2f} → adapter {tuned:.2f}, " if None not in (base, tuned) else ""
    icon = "🏆" if decision.get("beats_base") else "➖"
    lines = [f"{icon} **Verdict: {evaluation.get('verdict')}** on {evaluation.get('rows')} "
             f"held-out rows ({metric}: {scores}Δ {vs.get('delta', 0):+.2f}, 95% CI "
             f"{vs.get('low', 0):+.2f} to {vs.get('high', 0):+.2f})"]
    alias = evaluation.get("alias")
    if alias:
        lines.append(f"Promoted: **{alias}** now serves this adapter." if evaluation.get(
            "promoted") else f"Not promoted to **{alias}**: the gate did not pass.")
    report = (evaluation.get("report") or {}).get("html")
    if report:
        report_id = report.split("/")[2] if report.count("/") >= 3 else report
        lines.append(f"[Evaluation report]({server.rstrip('/')}{report}) (`{report_id}` in the "
                     "Evaluate tab's reports)")
    return lines


def upload_report(file_object: dict[str, Any]) -> str:
    """Markdown for an accepted upload: the file id and what the server counted."""
    parts = [f"✅ Accepted as `{file_object.get('id', '?')}`"]
    if file_object.get("filename"):
        parts.append(f"({file_object['filename']}")
        parts[-1] += f", {file_object['bytes']} bytes)" if file_object.get("bytes") else ")"
    rows = file_object.get("rows") or (file_object.get("metadata") or {}).get("rows")
    if rows:
        parts.append(f"· {rows} valid rows")
    return " ".join(parts)
