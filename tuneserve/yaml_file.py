"""Read a YAML file that must hold a mapping, with one readable error for the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tuneserve.errors import UserError


def load_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The mapping in ``path`` (``{}`` for an empty file); UserError naming ``what`` (e.g.
    "config file", "suite") and the path when it is not valid YAML or not a mapping."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{what} {path} must be a YAML mapping of keys to values")
    return raw
