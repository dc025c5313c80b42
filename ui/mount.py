"""Mount the UI into the service at ``/ui`` (listed in ``service/routers.py``).

The mounted UI still talks to the service over HTTP, with each session's logged-in key
(``ui/app.py``). Its server is fixed here: ``TUNESERVE_UI_SERVER_URL`` if set, else the
listening socket a session's request reached (this process), which works behind any
ingress because the call never leaves the process's host. No field on the page changes
it, so the page cannot make the service send requests elsewhere.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

UI_PATH = "/ui"


def mount(app: FastAPI) -> None:
    """Attach the Gradio app to ``app`` at ``/ui``.

    ``TUNESERVE_UI=0`` leaves the UI out (an API-only deployment, fast app builds in
    tests); ``TUNESERVE_UI_SERVER_URL`` overrides the API address the UI calls (e.g. when
    TLS is terminated in the process itself).
    """
    if os.environ.get("TUNESERVE_UI", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    import gradio as gr

    from ui.app import build_ui

    # The URL is fixed here, for the app's life: nothing on the page can change it.
    blocks = build_ui(os.environ.get("TUNESERVE_UI_SERVER_URL") or None)
    gr.mount_gradio_app(app, blocks, path=UI_PATH, footer_links=[], ssr_mode=False)
