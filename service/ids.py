"""OpenAI-style object ids, one rule for every object the service creates."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """A random id such as ``ftjob-3f9a…`` or ``chatcmpl-…`` (24 hex chars after the prefix)."""
    return f"{prefix}-{secrets.token_hex(12)}"
