"""The Gradio app: Compare, Adapters, Evaluate and Train tabs over the tuneserve HTTP API.

``build_ui(server_url)`` returns a ``gr.Blocks`` that is either launched alone
(``tuneserve ui --server URL``) or mounted into the service at ``/ui``. Every handler
builds a :class:`ui.client.TuneserveClient` from the connection fields on the page, so
one page can point at any deployment. Server errors become a toast (``gr.Warning``) and a
status line in the tab, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from tuneserve.job_status import TERMINAL_STATUSES
from ui import evaluate as ev
from ui.adapters import COLUMNS as ADAPTER_COLUMNS
from ui.adapters import adapter_table, latest_verdicts
from ui.client import SamplingParams, ServerError, TuneserveClient
from ui.compare import MAX_SLOTS, SnippetRequest, build_messages, compare_stream
from ui.train import (
    PRESETS,
    evaluation_running,
    job_request,
    loss_frame,
    progress_text,
    upload_report,
)

TITLE = "tuneserve"
NONE_LABEL = ("(none)", "")  # the empty dropdown value: this column is off
UI_CONCURRENCY = 32


def _client(server: str, api_key: str | None) -> TuneserveClient:
    return TuneserveClient(server, api_key)


def _refusal(exc: ServerError) -> str:
    """Show ``exc`` as a toast and return the same text for the tab's status line."""
    message = str(exc)
    gr.Warning(message)
    return f"⚠️ {message}"


def _seed(value: float | None) -> int | None:
    return None if value is None or value == "" else int(value)


# ---- models (shared by all tabs) -------------------------------------------------------


async def refresh_models(server: str, api_key: str) -> tuple[Any, ...]:
    """Reload ``/v1/models`` into every model picker; returns (slot dropdowns..., base
    dropdown, eval models, status)."""
    try:
        cards = await _client(server, api_key).list_models()
    except ServerError as exc:
        skips = [gr.skip()] * (MAX_SLOTS + 2)
        return (*skips, _refusal(exc))
    ids = [c.id for c in cards]
    bases = [c.id for c in cards if not c.is_adapter] or ids[:1]
    adapters = [c.id for c in cards if c.is_adapter]
    # The first column shows the base; the others keep the user's choice and can be off.
    slot_updates = [gr.update(choices=ids, value=bases[0] if bases else None)]
    slot_updates += [gr.update(choices=[NONE_LABEL, *ids]) for _ in range(1, MAX_SLOTS)]
    base_update = gr.update(choices=bases, value=bases[0] if bases else None)
    # Evaluate defaults to the question people ask: is the newest adapter better than base?
    newest = sorted((c for c in cards if c.is_adapter), key=lambda c: c.created or 0)[-1:]
    eval_update = gr.update(choices=ids, value=bases[:1] + [c.id for c in newest])
    status = f"Connected: base **{', '.join(bases) or '?'}**, {len(adapters)} adapter(s)."
    return (*slot_updates, base_update, eval_update, status)


# ---- Compare ---------------------------------------------------------------------------


def _split_slots(values: tuple[Any, ...]) -> tuple[list[str | None], list[list[dict]]]:
    models = [v or None for v in values[:MAX_SLOTS]]
    histories = [list(v or []) for v in values[MAX_SLOTS : 2 * MAX_SLOTS]]
    return models, histories


async def send_prompt(
    server: str,
    api_key: str,
    system_prompt: str,
    prompt: str,
    temperature: float,
    top_p: float,
    max_tokens: float,
    seed: float | None,
    *slots: Any,
):
    """Stream one prompt to every selected model; yields (chats..., stats..., status)."""
    models, histories = _split_slots(slots)
    unchanged = [gr.skip()] * (2 * MAX_SLOTS)
    if not prompt or not prompt.strip():
        gr.Warning("Type a prompt first.")
        yield (*unchanged, "Type a prompt first.")
        return
    if not any(models):
        gr.Warning("Pick at least one model.")
        yield (*unchanged, "Pick at least one model.")
        return
    try:
        client = _client(server, api_key)
    except ServerError as exc:
        yield (*unchanged, _refusal(exc))
        return
    params = SamplingParams(
        temperature=float(temperature),
        top_p=float(top_p),
        max_tokens=int(max_tokens),
        seed=_seed(seed),
    )
    messages = [
        build_messages(system_prompt, histories[i], prompt) if models[i] else None
        for i in range(MAX_SLOTS)
    ]
    warned: set[int] = set()
    async for states in compare_stream(client, models, messages, params):
        chats, stats = [], []
        for i, state in enumerate(states):
            if not state.model:
                chats.append(gr.skip())
                stats.append("")
                continue
            turn = [{"role": "user", "content": prompt}]
            if state.text or not state.error:
                turn.append({"role": "assistant", "content": state.text or "…"})
            chats.append(histories[i] + turn)
            stats.append(state.stats_line())
            if state.error and i not in warned:
                warned.add(i)
                gr.Warning(f"{state.model}: {state.error}")
        running = sum(s.running for s in states)
        errors = [f"⚠️ {s.model}: {s.error}" for s in states if s.error]
        status = "\n\n".join(errors) or (f"Generating… ({running} running)" if running else "Done.")
        yield (*chats, *stats, status)


def clear_chats() -> tuple[Any, ...]:
    """Empty every column's history and stats."""
    return (*([[]] * MAX_SLOTS), *([""] * MAX_SLOTS), "")


def render_snippet(
    server: str,
    system_prompt: str,
    prompt: str,
    kind: str,
    temperature: float,
    top_p: float,
    max_tokens: float,
    seed: float | None,
    *slots: Any,
) -> Any:
    """The ``curl`` / ``openai`` equivalent of the current Compare inputs."""
    models, histories = _split_slots(slots)
    chosen = [i for i, m in enumerate(models) if m]
    request = SnippetRequest(
        base_url=(server or "").rstrip("/"),
        models=[models[i] for i in chosen],
        messages=[build_messages(system_prompt, histories[i], prompt or "...") for i in chosen],
        params=SamplingParams(float(temperature), float(top_p), int(max_tokens), _seed(seed)),
    )
    language = "shell" if kind == "curl" else "python"
    return gr.update(value=request.render(kind), language=language)


# ---- Adapters --------------------------------------------------------------------------


async def load_adapters(server: str, api_key: str) -> tuple[Any, ...]:
    """(table, unload-dropdown update, status) from the registry."""
    client = None
    try:
        client = _client(server, api_key)
        records = await client.list_adapters()
        source = ""
    except ServerError as exc:
        if client is None or not exc.not_available:
            return gr.skip(), gr.skip(), _refusal(exc)
        # Older servers: the adapters are still visible in /v1/models.
        try:
            cards = await client.list_models()
        except ServerError as exc2:
            return gr.skip(), gr.skip(), _refusal(exc2)
        records = [
            {"name": c.id, "parent": c.parent, "created": c.created, **c.extra}
            for c in cards
            if c.is_adapter
        ]
        source = " (from /v1/models: this server has no adapter registry API)"
    try:  # the eval column also shows the newest report's verdict on each adapter
        verdicts = latest_verdicts(await client.list_reports())
    except ServerError:
        verdicts = {}
    table = adapter_table(records, verdicts)
    names = list(table["name"])
    return (
        table,
        gr.update(choices=names, value=names[0] if names else None),
        f"{len(names)} adapter(s) registered{source}.",
    )


async def register_adapter(server: str, admin_key: str, name: str, path: str) -> str:
    """Register a folder on the server's disk under ``name`` (admin)."""
    if not (name or "").strip() or not (path or "").strip():
        gr.Warning("Give the adapter a name and the folder path on the server.")
        return "Give the adapter a name and the folder path on the server."
    try:
        await _client(server, None).register_adapter(name.strip(), path.strip(), admin_key)
    except ServerError as exc:
        return _refusal(exc)
    gr.Info(f"Adapter {name.strip()} loaded.")
    return f"✅ Loaded **{name.strip()}** from `{path.strip()}`."


async def upload_adapter(server: str, admin_key: str, name: str, archive: str | None) -> str:
    """Upload an archive (.zip / .tar.gz) of an adapter folder (admin)."""
    if not archive:
        gr.Warning("Choose an adapter archive (.zip or .tar.gz) first.")
        return "Choose an adapter archive (.zip or .tar.gz) first."
    name = (name or "").strip() or Path(archive).name.split(".")[0]
    try:
        await _client(server, None).upload_adapter(name, Path(archive), admin_key)
    except ServerError as exc:
        return _refusal(exc)
    gr.Info(f"Adapter {name} uploaded and loaded.")
    return f"✅ Uploaded and loaded **{name}**."


async def unload_adapter(server: str, admin_key: str, name: str | None) -> str:
    """Unload and unregister ``name`` (admin)."""
    if not name:
        gr.Warning("Pick an adapter to unload.")
        return "Pick an adapter to unload."
    try:
        await _client(server, None).delete_adapter(name, admin_key)
    except ServerError as exc:
        return _refusal(exc)
    gr.Info(f"Adapter {name} unloaded.")
    return f"✅ Unloaded **{name}**."


# ---- Train -----------------------------------------------------------------------------


async def upload_dataset(server: str, api_key: str, path: str | None) -> tuple[str, Any]:
    """Upload a dataset to ``/v1/files``; returns (report markdown, file id or skip)."""
    if not path:
        return "", None
    try:
        file_object = await _client(server, api_key).upload_file(Path(path))
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
        model=base_model, training_file=file_id, preset=preset, suffix=suffix, seed=_seed(seed)
    )
    try:
        job = await _client(server, api_key).create_job(body)
    except ServerError as exc:
        return gr.skip(), gr.skip(), gr.skip(), _refusal(exc)
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
    client = _client(server, api_key)
    try:
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
        job = await _client(server, api_key).cancel_job(job_id)
    except ServerError as exc:
        return _refusal(exc)
    return f"Cancellation requested ({job.get('status', '?')})."


async def list_jobs(server: str, api_key: str) -> tuple[Any, str]:
    """The recent jobs as a table."""
    try:
        jobs = await _client(server, api_key).list_jobs()
    except ServerError as exc:
        return gr.skip(), _refusal(exc)
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


# ---- layout ----------------------------------------------------------------------------


def detect_server(current: str, request: gr.Request) -> str:
    """The mounted UI's own server: the listening address the browser's request reached.

    Used only when no server URL is set, so the page calls the service it is served by.
    """
    if (current or "").strip():
        return current
    scope = getattr(request, "request", None)
    scope = getattr(scope, "scope", None) or {}
    host_port = scope.get("server")
    if host_port and host_port[0]:
        host, port = host_port
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"
    headers = getattr(request, "headers", None) or {}
    host = headers.get("host") if hasattr(headers, "get") else None
    return f"http://{host}" if host else ""


def build_ui(server_url: str | None, api_key: str | None = None) -> gr.Blocks:
    """The whole app for the server at ``server_url`` (editable on the page).

    ``None`` means "the server this page is served by" (the ``/ui`` mount).
    """
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nCompare, manage, evaluate and train LoRA adapters.")
        with gr.Accordion("Server connection", open=False):
            with gr.Row():
                server = gr.Textbox(
                    server_url or "",
                    label="Server URL",
                    placeholder="this server",
                    elem_id="server-url",
                )
                key = gr.Textbox(api_key or "", label="API key", type="password", elem_id="api-key")
                refresh = gr.Button("Connect / refresh models", elem_id="refresh")
        conn_status = gr.Markdown(elem_id="connection-status")

        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                compare = _compare_tab(server, key)
            with gr.Tab("Adapters", id="adapters"):
                _adapters_tab(server, key)
            with gr.Tab("Evaluate", id="evaluate"):
                eval_models = ev.evaluate_tab(server, key)
            with gr.Tab("Train", id="train"):
                base_model, job_models_refresh = _train_tab(server, key)

        model_outputs = [*compare, base_model, eval_models, conn_status]
        demo.load(detect_server, [server], server).then(
            refresh_models, [server, key], model_outputs
        )
        refresh.click(refresh_models, [server, key], model_outputs)
        # A finished job's adapter shows up in the pickers without a manual refresh.
        job_models_refresh.change(refresh_models, [server, key], model_outputs)
    # Handlers mostly wait on the server (streams, polls): let many users' events run at
    # once instead of Gradio's default of one at a time per event; the server batches.
    demo.queue(default_concurrency_limit=UI_CONCURRENCY)
    return demo


def _compare_tab(server: gr.Textbox, key: gr.Textbox) -> list[gr.Dropdown]:
    system = gr.Textbox(label="System prompt (optional)", lines=1, elem_id="system-prompt")
    dropdowns, chats, stats = [], [], []
    with gr.Row(equal_height=False):
        for index in range(MAX_SLOTS):
            with gr.Column(min_width=220):
                dropdowns.append(
                    gr.Dropdown(
                        choices=[],
                        value=None,
                        label="Base model" if index == 0 else f"Adapter {index}",
                        allow_custom_value=True,
                        elem_id=f"model-{index}",
                    )
                )
                chats.append(
                    gr.Chatbot(
                        label=f"Answers {index + 1}",
                        height=360,
                        elem_id=f"answer-{index}",
                        feedback_options=None,
                        # Model output is shell commands full of `$`: no LaTeX rendering.
                        latex_delimiters=[],
                        buttons=["copy"],
                    )
                )
                stats.append(gr.Markdown(elem_id=f"stats-{index}"))
    with gr.Row():
        prompt = gr.Textbox(
            label="Prompt",
            lines=2,
            scale=4,
            elem_id="prompt",
            placeholder="Ask all selected models at once",
        )
        with gr.Column(scale=1, min_width=120):
            send = gr.Button("Send", variant="primary", elem_id="send")
            clear = gr.Button("Clear history", elem_id="clear")
    status = gr.Markdown(elem_id="compare-status")
    with gr.Accordion("Generation parameters", open=False):
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.0, step=0.05, label="temperature")
            top_p = gr.Slider(0.05, 1, value=1.0, step=0.05, label="top_p")
            max_tokens = gr.Slider(1, 1024, value=64, step=1, label="max tokens")
            seed = gr.Number(value=None, precision=0, label="seed (empty = random)")
    with gr.Accordion("Copy as curl / openai", open=False):
        kind = gr.Radio(["curl", "openai"], value="curl", show_label=False)
        snippet = gr.Code(language="shell", buttons=["copy"], elem_id="snippet", interactive=False)

    params = [temperature, top_p, max_tokens, seed]
    inputs = [server, key, system, prompt, *params, *dropdowns, *chats]
    outputs = [*chats, *stats, status]
    snippet_inputs = [server, system, prompt, kind, *params, *dropdowns, *chats]
    for trigger in (send.click, prompt.submit):
        trigger(send_prompt, inputs, outputs).then(render_snippet, snippet_inputs, snippet)
    clear.click(clear_chats, None, outputs)
    kind.change(render_snippet, snippet_inputs, snippet)
    return dropdowns


def _adapters_tab(server: gr.Textbox, key: gr.Textbox) -> None:
    gr.Markdown(
        "Adapters the server serves. Loading, uploading and unloading need the **admin key**."
    )
    admin_key = gr.Textbox(label="Admin key", type="password", elem_id="admin-key")
    table = gr.Dataframe(
        headers=ADAPTER_COLUMNS, interactive=False, elem_id="adapter-table", wrap=True
    )
    reload = gr.Button("Refresh", elem_id="adapters-refresh")
    with gr.Row():
        with gr.Column():
            gr.Markdown("**Load a folder on the server**")
            reg_name = gr.Textbox(label="Name", elem_id="register-name")
            reg_path = gr.Textbox(label="Folder on the server", elem_id="register-path")
            register = gr.Button("Load", elem_id="register")
        with gr.Column():
            gr.Markdown("**Upload an adapter archive**")
            up_name = gr.Textbox(label="Name (default: archive name)", elem_id="upload-name")
            archive = gr.File(file_types=[".zip", ".gz", ".tgz"], label="Archive")
            upload = gr.Button("Upload", elem_id="upload")
        with gr.Column():
            gr.Markdown("**Unload**")
            victim = gr.Dropdown(label="Adapter", choices=[], elem_id="unload-name")
            unload = gr.Button("Unload", variant="stop", elem_id="unload")
    status = gr.Markdown(elem_id="adapter-status")

    outputs = [table, victim, status]
    reload.click(load_adapters, [server, key], outputs)
    register.click(register_adapter, [server, admin_key, reg_name, reg_path], status).success(
        load_adapters, [server, key], [table, victim, gr.State()]
    )
    upload.click(upload_adapter, [server, admin_key, up_name, archive], status).success(
        load_adapters, [server, key], [table, victim, gr.State()]
    )
    unload.click(unload_adapter, [server, admin_key, victim], status).success(
        load_adapters, [server, key], [table, victim, gr.State()]
    )


def _train_tab(server: gr.Textbox, key: gr.Textbox) -> tuple[gr.Dropdown, gr.Textbox]:
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
