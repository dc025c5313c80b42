"""The Adapters tab's table: one row per registered adapter, from the registry's records.

Records come from ``GET /v1/adapters`` (or, on a server without it, the adapter entries of
``GET /v1/models``); fields are read leniently so the table survives additive changes to
the record shape.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pandas as pd

COLUMNS = ["name", "base", "rank", "created", "dataset", "eval score", "source"]


def _first(record: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = record.get(key)
        if value not in (None, "", [], {}):
            return value
    return None


def _manifest(record: Mapping[str, Any]) -> Mapping[str, Any]:
    manifest = record.get("manifest") or record.get("metadata") or {}
    return manifest if isinstance(manifest, Mapping) else {}


def _created(value: Any) -> str:
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return str(value or "")


def _dataset(manifest: Mapping[str, Any]) -> str:
    datasets = manifest.get("datasets") or []
    names = []
    for item in datasets if isinstance(datasets, list) else []:
        path = item.get("path") if isinstance(item, Mapping) else item
        if path:
            rows = item.get("rows") if isinstance(item, Mapping) else None
            name = str(path).rstrip("/").rsplit("/", 1)[-1]
            names.append(f"{name} ({rows} rows)" if rows else name)
    return ", ".join(names)


def _score(record: Mapping[str, Any], manifest: Mapping[str, Any]) -> str:
    score = _first(record, "eval_score", "score")
    if score is not None:
        return f"{score:.3f}" if isinstance(score, float) else str(score)
    metrics = manifest.get("metrics") or manifest.get("eval") or {}
    if not isinstance(metrics, Mapping):
        return ""
    shown = []
    for key in ("exact_match", "held_out_exact_match", "chrf", "eval_loss"):
        value = metrics.get(key)
        if isinstance(value, int | float):
            shown.append(f"{key} {value:.3f}")
    return ", ".join(shown)


def latest_verdicts(reports: list[Mapping[str, Any]]) -> dict[str, str]:
    """Adapter label -> the newest report's one-line verdict about it (``GET /reports``).

    Reports come newest first; each headline line names the candidate it is about.
    """
    verdicts: dict[str, str] = {}
    for report in reports:
        models = list(report.get("models") or [])
        for label in models[1:]:  # the first model is the baseline
            if label in verdicts:
                continue
            line = next((h for h in report.get("headline") or [] if f" {label} " in f" {h} "), None)
            if line:
                verdicts[label] = f"{report.get('suite') or report.get('id')}: {line}"
    return verdicts


def adapter_row(record: Mapping[str, Any], verdict: str | None = None) -> list[Any]:
    """One table row (see ``COLUMNS``) for a registry record; ``verdict`` (from the
    evaluation reports) fills the eval column when the manifest has no held-out score."""
    manifest = _manifest(record)
    config = manifest.get("config") or manifest.get("train_config") or {}
    rank = _first(record, "rank", "lora_rank", "r")
    if rank is None and isinstance(config, Mapping):
        rank = config.get("lora_r")
    return [
        _first(record, "name", "id") or "?",
        _first(record, "base_model", "base", "parent", "root") or manifest.get("base_model") or "",
        rank if rank is not None else "",
        _created(_first(record, "created", "created_at")),
        _dataset(manifest) or str(record.get("dataset") or ""),
        _score(record, manifest) or verdict or "",
        str(_first(record, "state", "status", "source") or ""),
    ]


def adapter_table(
    records: list[Mapping[str, Any]], verdicts: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """The whole table, sorted by name."""
    verdicts = verdicts or {}
    rows = sorted(
        (adapter_row(r, verdicts.get(str(_first(r, "name", "id")))) for r in records),
        key=lambda row: str(row[0]),
    )
    return pd.DataFrame(rows, columns=COLUMNS)
