"""What every tab shares: the client for the logged-in session, and how a server refusal
is shown (a toast plus the same text for the tab's status line)."""

from __future__ import annotations

import gradio as gr

from tuneserve.errors import UserError
from ui.client import ServerError, TuneserveClient

NOT_LOGGED_IN = "Not logged in: enter your API key and press Log in."


def connect(server: str | None, api_key: str | None) -> TuneserveClient:
    """The client of a logged-in session. ``api_key`` is the session's ``gr.State``: None
    until a login succeeded (``""`` after logging in to a server without keys), so a
    handler reached without a login refuses here, before any request is made."""
    if api_key is None:
        raise ServerError(NOT_LOGGED_IN)
    return TuneserveClient(server or "", api_key)


def refusal(exc: ServerError | UserError) -> str:
    """Show ``exc`` (a server's refusal, or bad input) as a toast and return the same text
    for the tab's status line."""
    message = str(exc)
    gr.Warning(message)
    return f"⚠️ {message}"


def seed_value(value: float | None) -> int | None:
    """A gr.Number seed: empty means none."""
    return None if value is None or value == "" else int(value)
