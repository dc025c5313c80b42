"""What every tab shares: the client built from the page's connection fields, and how a
server refusal is shown (a toast plus the same text for the tab's status line)."""

from __future__ import annotations

import gradio as gr

from tuneserve.errors import UserError
from ui.client import ServerError, TuneserveClient


def connect(server: str, api_key: str | None) -> TuneserveClient:
    return TuneserveClient(server, api_key)


def refusal(exc: ServerError | UserError) -> str:
    """Show ``exc`` (a server's refusal, or bad input) as a toast and return the same text
    for the tab's status line."""
    message = str(exc)
    gr.Warning(message)
    return f"⚠️ {message}"


def seed_value(value: float | None) -> int | None:
    """A gr.Number seed: empty means none."""
    return None if value is None or value == "" else int(value)
