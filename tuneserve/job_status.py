"""Fine-tuning job statuses shared by the service and the UI (which talks to the service
over HTTP only, so it cannot import ``service``)."""

from __future__ import annotations

# Statuses a job never leaves (OpenAI's fine-tuning API).
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
