"""The Adapters tab: the table of registered adapters, and loading, uploading, unloading.

One row per registered adapter, from the registry's records.
Records come from ``GET /v1/adapters`` (or, on a server without it, the adapter entries of
``GET /v1/models``); fields are read leniently so the table survives additive changes to
the record shape.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from ui.client import ServerError
from ui.common import connect, refusal

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


# ---- the tab -----------------------------------------------------------------------


async def load_adapters(server: str, api_key: str) -> tuple[Any, ...]:
    """(table, unload-dropdown update, status) from the registry."""
    client = None
    try:
        client = connect(server, api_key)
        records = await client.list_adapters()
        source = ""
    except ServerError as exc:
        if client is None or not exc.not_available:
            return gr.skip(), gr.skip(), refusal(exc)
        # Older servers: the adapters are still visible in /v1/models.
        try:
            cards = await client.list_models()
        except ServerError as exc2:
            return gr.skip(), gr.skip(), refusal(exc2)
        records = [
            {"name": c.id, "parent": c.parent, "created": c.created, **c.extra}
            for c in cards
            if c.is_adapter
        ]
        source = " (from /v1/models: this server has no adapter registry API)"
    try:  # the eval column also shows the newest report's verdict on each adapter
        verdicts = latest_verdicts(await client.list_reports())
    except ServerError:
        verdicts = {}
    table = adapter_table(records, verdicts)
    names = list(table["name"])
    return (
        table,
        gr.update(choices=names, value=names[0] if names else None),
        f"{len(names)} adapter(s) registered{source}.",
    )


async def register_adapter(server: str, api_key: str | None, name: str, path: str) -> str:
    """Register a folder on the server's disk under ``name`` (needs an admin login)."""
    if not (name or "").strip() or not (path or "").strip():
        gr.Warning("Give the adapter a name and the folder path on the server.")
        return "Give the adapter a name and the folder path on the server."
    try:
        await connect(server, api_key).register_adapter(name.strip(), path.strip(), api_key)
    except ServerError as exc:
        return refusal(exc)
    gr.Info(f"Adapter {name.strip()} loaded.")
    return f"✅ Loaded **{name.strip()}** from `{path.strip()}`."


async def upload_adapter(server: str, api_key: str | None, name: str, archive: str | None) -> str:
    """Upload an archive (.zip / .tar.gz) of an adapter folder (admin)."""
    if not archive:
        gr.Warning("Choose an adapter archive (.zip or .tar.gz) first.")
        return "Choose an adapter archive (.zip or .tar.gz) first."
    name = (name or "").strip() or Path(archive).name.split(".")[0]
    try:
        await connect(server, api_key).upload_adapter(name, Path(archive), api_key)
    except ServerError as exc:
        return refusal(exc)
    gr.Info(f"Adapter {name} uploaded and loaded.")
    return f"✅ Uploaded and loaded **{name}**."


async def unload_adapter(server: str, api_key: str | None, name: str | None) -> str:
    """Unload and unregister ``name`` (admin)."""
    if not name:
        gr.Warning("Pick an adapter to unload.")
        return "Pick an adapter to unload."
    try:
        await connect(server, api_key).delete_adapter(name, api_key)
    except ServerError as exc:
        return refusal(exc)
    gr.Info(f"Adapter {name} unloaded.")
    return f"✅ Unloaded **{name}**."


def adapters_tab(server: gr.State, key: gr.State) -> None:
    gr.Markdown(
        "Adapters the server serves. Loading, uploading and unloading need a login with an "
        "**admin key**."
    )
    table = gr.Dataframe(
        headers=COLUMNS, interactive=False, elem_id="adapter-table", wrap=True
    )
    reload = gr.Button("Refresh", elem_id="adapters-refresh")
    with gr.Row():
        with gr.Column():
            gr.Markdown("**Load a folder on the server**")
            reg_name = gr.Textbox(label="Name", elem_id="register-name")
            reg_path = gr.Textbox(label="Folder on the server", elem_id="register-path")
            register = gr.Button("Load", elem_id="register")
        with gr.Column():
            gr.Markdown("**Upload an adapter archive**")
            up_name = gr.Textbox(label="Name (default: archive name)", elem_id="upload-name")
            archive = gr.File(file_types=[".zip", ".gz", ".tgz"], label="Archive")
            upload = gr.Button("Upload", elem_id="upload")
        with gr.Column():
            gr.Markdown("**Unload**")
            victim = gr.Dropdown(label="Adapter", choices=[], elem_id="unload-name")
            unload = gr.Button("Unload", variant="stop", elem_id="unload")
    status = gr.Markdown(elem_id="adapter-status")

    outputs = [table, victim, status]
    reload.click(load_adapters, [server, key], outputs)
    register.click(register_adapter, [server, key, reg_name, reg_path], status).success(
        load_adapters, [server, key], [table, victim, gr.State()]
    )
    upload.click(upload_adapter, [server, key, up_name, archive], status).success(
        load_adapters, [server, key], [table, victim, gr.State()]
    )
    unload.click(unload_adapter, [server, key, victim], status).success(
        load_adapters, [server, key], [table, victim, gr.State()]
    )
