"""The Gradio app: Compare, Adapters, Evaluate and Train tabs over the tuneserve HTTP API.

``build_ui(server_url)`` returns a ``gr.Blocks`` that is either launched alone
(``tuneserve ui --server URL``) or mounted into the service at ``/ui``. Each tab is its own
module (``ui/compare.py``, ``ui/adapters.py``, ``ui/evaluate.py``, ``ui/train.py``); this
one lays them out and fills every model picker from ``/v1/models``. Every handler builds
its client from the connection fields on the page, so one page can point at any
deployment. Server errors become a toast (``gr.Warning``) and a status line in the tab,
never a traceback.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ui import evaluate as ev
from ui.adapters import adapters_tab
from ui.client import ServerError
from ui.common import connect, refusal
from ui.compare import MAX_SLOTS, compare_tab
from ui.train import train_tab

TITLE = "tuneserve"
NONE_LABEL = ("(none)", "")  # the empty dropdown value: this column is off
UI_CONCURRENCY = 32


# ---- models (shared by all tabs) -------------------------------------------------------


async def refresh_models(server: str, api_key: str) -> tuple[Any, ...]:
    """Reload ``/v1/models`` into every model picker; returns (slot dropdowns..., base
    dropdown, eval models, status)."""
    try:
        cards = await connect(server, api_key).list_models()
    except ServerError as exc:
        skips = [gr.skip()] * (MAX_SLOTS + 2)
        return (*skips, refusal(exc))
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
                compare = compare_tab(server, key)
            with gr.Tab("Adapters", id="adapters"):
                adapters_tab(server, key)
            with gr.Tab("Evaluate", id="evaluate"):
                eval_models = ev.evaluate_tab(server, key)
            with gr.Tab("Train", id="train"):
                base_model, job_models_refresh = train_tab(server, key)

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
