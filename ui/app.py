"""The Gradio app: Compare, Adapters, Evaluate and Train tabs over the tuneserve HTTP API.

``build_ui(server_url)`` returns a ``gr.Blocks`` that is either launched alone
(``tuneserve ui --server URL``) or mounted into the service at ``/ui``. Each tab is its own
module (``ui/compare.py``, ``ui/adapters.py``, ``ui/evaluate.py``, ``ui/train.py``); this
one lays them out, holds the login and fills every model picker from ``/v1/models``.

The page shows only a login box until an API key is accepted by the server
(``GET /v1/models`` with it). The server URL and the key live in ``gr.State``: session
state kept on the UI's server, never sent to the page nor settable by it, so the URL is
the one fixed when the UI was built (no SSRF through the page) and the key is never
rendered back. Every handler builds its client with ``ui.common.connect``, which refuses
before any request when the session has not logged in. Server errors become a toast
(``gr.Warning``) and a status line in the tab, never a traceback.
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


async def refresh_models(server: str | None, api_key: str | None) -> tuple[Any, ...]:
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


# ---- login ----------------------------------------------------------------------------


def detect_server(current: str | None, request: gr.Request) -> str:
    """The server of a session: the URL fixed at build time, else (the ``/ui`` mount) the
    listening socket the browser's request reached, i.e. this very process. Never the
    request's ``Host`` header, which the caller chooses."""
    if (current or "").strip():
        return str(current)
    scope = getattr(request, "request", None)
    scope = getattr(scope, "scope", None) or {}
    host_port = scope.get("server")
    if host_port and host_port[0]:
        host, port = host_port
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"
    return ""


def _screen(logged_in: bool) -> tuple[Any, Any]:
    """(login box, app) visibility."""
    return gr.update(visible=not logged_in), gr.update(visible=logged_in)


async def login(
    server: str | None, typed_key: str, request: gr.Request
) -> tuple[Any, ...]:
    """Check ``typed_key`` against the server (``GET /v1/models``); on success keep it in
    the session and show the app. Returns (server, key state, key box, login box, app,
    model pickers..., status). The key box is always cleared: the key is never sent back."""
    server = detect_server(server, request)
    key = (typed_key or "").strip()
    if not key:  # nothing to check: no request (a server without keys takes any text)
        return (server, None, "", *_screen(False), *[gr.skip()] * (MAX_SLOTS + 2),
                refusal(ServerError("Enter your API key to log in.")))
    refreshed = await refresh_models(server, key)
    status = refreshed[-1]
    if not str(status).startswith("Connected"):
        return (server, None, "", *_screen(False), *refreshed)
    return (server, key, "", *_screen(True), *refreshed)


def logout() -> tuple[Any, ...]:
    """Forget the session's key: (key state, login box, app, status)."""
    return (None, *_screen(False), "Logged out.")


# ---- layout ----------------------------------------------------------------------------


def build_ui(server_url: str | None, api_key: str | None = None) -> gr.Blocks:
    """The whole app for the server at ``server_url``, fixed for the app's life.

    ``None`` means "the server this page is served by" (the ``/ui`` mount). ``api_key``
    (standalone ``tuneserve ui --api-key``) logs every session in on load; it stays in
    this process, never in the page.
    """
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nCompare, manage, evaluate and train LoRA adapters.")
        # Session state only (never in the page's config nor settable by the browser).
        server = gr.State(server_url)
        key = gr.State(None)  # the logged-in key; None: not logged in
        with gr.Group(elem_id="login") as login_box:
            key_box = gr.Textbox(
                label="API key", type="password", elem_id="api-key",
                placeholder="your tuneserve API key (admin key for adapter changes)",
            )
            login_button = gr.Button("Log in", variant="primary", elem_id="login-button")
        conn_status = gr.Markdown(elem_id="connection-status")

        with gr.Column(visible=False, elem_id="app") as main:
            with gr.Row():
                refresh = gr.Button("Refresh models", elem_id="refresh", size="sm")
                logout_button = gr.Button("Log out", elem_id="logout", size="sm")
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
        login_outputs = [server, key, key_box, login_box, main, *model_outputs]
        for trigger in (login_button.click, key_box.submit):
            trigger(login, [server, key_box], login_outputs)
        logout_button.click(logout, None, [key, login_box, main, conn_status])
        if api_key is not None:
            preset = gr.State(api_key)  # server-side, like the session key
            demo.load(login, [server, preset], login_outputs)
        refresh.click(refresh_models, [server, key], model_outputs)
        # A finished job's adapter shows up in the pickers without a manual refresh.
        job_models_refresh.change(refresh_models, [server, key], model_outputs)
    # Handlers mostly wait on the server (streams, polls): let many users' events run at
    # once instead of Gradio's default of one at a time per event; the server batches.
    demo.queue(default_concurrency_limit=UI_CONCURRENCY)
    return demo
