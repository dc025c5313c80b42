"""Evaluation schedule entries as settings read them (``TUNESERVE_EVAL_SCHEDULES``,
``tuneserve serve --eval-schedule``).

An entry is a cron expression (UTC), a suite, the models to compare and, optionally, the
project it runs for (it calls the server with that project's key, so it sees that project's
models and its reports are that project's: ``service.tenancy.schedule_eval_key``; without
one it runs with an admin key). Either form works:

- JSON: ``[{"cron": "0 3 * * *", "suite": "docker-commands", "models": "base,docker-lora",
  "project": "team-a"}]``
- compact: ``0 3 * * *|docker-commands|base,docker-lora[|team-a]``; entries separated by
  ``;`` or newlines (one per ``--eval-schedule`` flag).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evaluation.scheduler import validate_cron
from tuneserve.errors import UserError

COMPACT_FORM = ("CRON|SUITE|MODELS[|PROJECT], e.g. "
                "'0 3 * * *|docker-commands|base,docker-lora|team-a'")


class EvalSchedule(BaseModel):
    """One schedule entry; validated when the settings are read, not at 3 am."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cron: str
    suite: str
    models: str
    # The keys file's project this entry runs for; None: an admin key's run.
    project: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[\w.-]+$")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        try:
            return validate_cron(value.strip())
        except UserError as exc:  # pydantic reports ValueError as a validation error
            raise ValueError(str(exc)) from None

    @field_validator("suite")
    @classmethod
    def _suite(cls, value: str) -> str:
        from evaluation.suite import load_suite

        try:
            load_suite(value.strip())  # unknown suite or bad YAML fails at startup
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()

    @field_validator("models", mode="before")
    @classmethod
    def _models_list(cls, value: object) -> object:
        return ",".join(map(str, value)) if isinstance(value, list) else value

    @field_validator("models")
    @classmethod
    def _models(cls, value: str) -> str:
        models = [m.strip() for m in value.split(",") if m.strip()]
        if not models:
            raise ValueError("models must name at least one model, e.g. 'base,docker-lora'")
        return ",".join(models)

    @property
    def label(self) -> str:
        owner = f" (project {self.project})" if self.project else ""
        return f"{self.suite} [{self.cron}] {self.models}{owner}"

    @property
    def model_ids(self) -> list[str]:
        """The server model ids the entry names (``label=id`` gives ``id``; ``base`` stays)."""
        return [part.split("=", 1)[-1] for part in self.models.split(",")]


def parse_schedules(value: object) -> object:
    """Settings input (env string, flag list or JSON) -> a list of entry dicts for pydantic."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return _json(text)
        value = [part for part in re.split(r"[;\n]", text) if part.strip()]
    if isinstance(value, list | tuple):
        entries: list[object] = []
        for item in value:
            if isinstance(item, str) and item.strip().startswith("["):
                entries.extend(parse_schedules(item))  # a JSON list given as one flag
            else:
                entries.append(_entry(item))
        return entries
    return value


def _entry(item: object) -> object:
    if not isinstance(item, str):
        return item
    text = item.strip()
    if text.startswith("{"):
        return _json(text)
    parts = [part.strip() for part in text.split("|")]
    if len(parts) not in (3, 4):
        raise ValueError(f"schedule entry {text!r}: want {COMPACT_FORM}")
    return dict(zip(("cron", "suite", "models", "project"), parts, strict=False))


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"eval schedules are not valid JSON: {exc}") from None
