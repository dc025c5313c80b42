"""The Train tab: presets, the job request, the live loss curve and progress from job
events, and the tab's handlers and layout.

Jobs go through the OpenAI-style fine-tuning API (``/v1/fine_tuning/jobs``); LoRA
settings ride in ``method.supervised.hyperparameters`` next to OpenAI's own keys (the
server maps them onto its training config).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from tuneserve.job_status import TERMINAL_STATUSES
from ui.client import ServerError
from ui.common import connect, refusal, seed_value


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


# ---- the tab -----------------------------------------------------------------------


async def upload_dataset(server: str, api_key: str, path: str | None) -> tuple[str, Any]:
    """Upload a dataset to ``/v1/files``; returns (report markdown, file id or skip)."""
    if not path:
        return "", None
    try:
        file_object = await connect(server, api_key).upload_file(Path(path))
    except ServerError as exc:
        gr.Warning("The server rejected the dataset: see the report below.")
        if exc.status is not None and not exc.not_available:
            # The server's message is the line-numbered validation report: keep its lines.
            return f"❌ **Rejected** (HTTP {exc.status})\n\n```\n{exc.message}\n```", None
        return f"⚠️ {exc}", None
    return upload_report(file_object), file_object.get("id")


async def launch_job(
    server: str,
    api_key: str,
    base_model: str | None,
    file_id: str | None,
    preset: str,
    suffix: str,
    seed: float | None,
) -> tuple[Any, ...]:
    """Create a fine-tuning job; returns (job id, progress, timer update, status)."""
    if not file_id:
        gr.Warning("Upload a valid dataset first.")
        return gr.skip(), gr.skip(), gr.skip(), "Upload a valid dataset first."
    if not base_model:
        gr.Warning("Pick a base model.")
        return gr.skip(), gr.skip(), gr.skip(), "Pick a base model."
    body = job_request(
        model=base_model, training_file=file_id, preset=preset, suffix=suffix, seed=seed_value(seed)
    )
    try:
        job = await connect(server, api_key).create_job(body)
    except ServerError as exc:
        return gr.skip(), gr.skip(), gr.skip(), refusal(exc)
    return (
        job["id"],
        progress_text(job, []),
        gr.Timer(active=True),
        f"Job `{job['id']}` created ({job.get('status', '?')}).",
    )


async def poll_job(server: str, api_key: str, job_id: str | None) -> tuple[Any, ...]:
    """One tick of the live view: (loss plot, progress, timer update, status)."""
    if not job_id:
        return gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip()
    try:
        client = connect(server, api_key)
        job = await client.get_job(job_id)
        events = await client.job_events(job_id)
    except ServerError as exc:
        # Keep polling through a transient failure, but say so.
        return gr.skip(), gr.skip(), gr.skip(), f"⚠️ {exc}"
    done = job.get("status") in TERMINAL_STATUSES
    return (
        loss_frame(events),
        progress_text(job, events, server),
        gr.Timer(active=not done or evaluation_running(job)),  # the verdict comes after
        f"Job {job.get('status')}." if done else gr.skip(),
    )


async def cancel_job(server: str, api_key: str, job_id: str | None) -> str:
    """Ask the server to cancel the running job."""
    if not job_id:
        return "No job to cancel."
    try:
        job = await connect(server, api_key).cancel_job(job_id)
    except ServerError as exc:
        return refusal(exc)
    return f"Cancellation requested ({job.get('status', '?')})."


async def list_jobs(server: str, api_key: str) -> tuple[Any, str]:
    """The recent jobs as a table."""
    try:
        jobs = await connect(server, api_key).list_jobs()
    except ServerError as exc:
        return gr.skip(), refusal(exc)
    rows = [
        [
            j.get("id"),
            j.get("model"),
            j.get("status"),
            j.get("fine_tuned_model") or "",
            j.get("trained_tokens") or "",
        ]
        for j in jobs
    ]
    columns = ["id", "base", "status", "fine-tuned model", "trained tokens"]
    return pd.DataFrame(rows, columns=columns), f"{len(rows)} job(s)."


def train_tab(server: gr.State, key: gr.State) -> tuple[gr.Dropdown, gr.Textbox]:
    gr.Markdown(
        "Upload a dataset (OpenAI chat JSONL, alpaca JSON/JSONL, prompt/completion JSONL or "
        "chat CSV). The server validates it on upload and lists every bad row by line."
    )
    file_id = gr.State(None)
    job_id = gr.State(None)
    with gr.Row():
        with gr.Column():
            dataset = gr.File(
                label="Dataset", file_types=[".jsonl", ".json", ".csv"], elem_id="dataset"
            )
            report = gr.Markdown(elem_id="dataset-report")
        with gr.Column():
            base_model = gr.Dropdown(label="Base model", choices=[], elem_id="train-base")
            preset_names = list(PRESETS)
            preset = gr.Dropdown(
                preset_names, value=preset_names[0], label="Preset", elem_id="preset"
            )
            preset_help = gr.Markdown(PRESETS[preset_names[0]].description)
            suffix = gr.Textbox(label="Suffix (part of the model name)", elem_id="suffix")
            seed = gr.Number(value=42, precision=0, label="seed")
            with gr.Row():
                launch = gr.Button("Start fine-tuning", variant="primary", elem_id="launch")
                cancel = gr.Button("Cancel job", variant="stop", elem_id="cancel")
    status = gr.Markdown(elem_id="train-status")
    progress = gr.Markdown(elem_id="job-progress")
    plot = gr.LinePlot(
        pd.DataFrame(columns=["step", "loss", "series"]),
        x="step",
        y="loss",
        color="series",
        title="Loss",
        elem_id="loss-plot",
    )
    # Changes when a job reaches a terminal state so the app refreshes the model pickers.
    finished_model = gr.Textbox(visible=False)
    with gr.Accordion("Recent jobs", open=False):
        jobs = gr.Dataframe(interactive=False)
        jobs_refresh = gr.Button("Refresh jobs")
    timer = gr.Timer(2.0, active=False)

    dataset.upload(upload_dataset, [server, key, dataset], [report, file_id])
    dataset.clear(lambda: ("", None), None, [report, file_id])
    preset.change(lambda name: PRESETS[name].description, preset, preset_help)
    launch.click(
        launch_job,
        [server, key, base_model, file_id, preset, suffix, seed],
        [job_id, progress, timer, status],
    )
    timer.tick(poll_job, [server, key, job_id], [plot, progress, timer, status]).then(
        _finished_marker, [progress], finished_model
    )
    cancel.click(cancel_job, [server, key, job_id], status)
    jobs_refresh.click(list_jobs, [server, key], [jobs, status])
    return base_model, finished_model


def _finished_marker(progress: str) -> Any:
    # Only a succeeded job's text names the served model; changing the hidden box then
    # triggers one refresh of the model pickers.
    return progress if "✅ Served as" in (progress or "") else gr.skip()
