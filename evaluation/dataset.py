"""The rows a suite is scored on: the held-out split, never rows an adapter trained on.

Rows are read with the training loaders (``training.data.load_rows``) and split with the
same function training used (``training.data.split_rows``). When an adapter's manifest
records its split (seed and held-out size), that split wins over the suite's defaults,
so the evaluation set is exactly what the adapter never saw.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.suite import Suite
from tuneserve.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Example:
    """One scored item: the conversation up to the answer, and the reference answer."""

    index: int
    messages: list[dict[str, Any]]
    reference: str


@dataclass
class HeldOut:
    examples: list[Example]
    path: Path
    sha256: str
    val_set_size: float
    seed: int
    split_source: str  # "manifest:<name>" or "suite"
    notes: list[str] = field(default_factory=list)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_from_manifest(manifest: dict[str, Any]) -> tuple[float, int] | None:
    """``(val_set_size, seed)`` recorded in an adapter manifest, or None when absent.

    Looks in the documented places: a ``split`` block, then the resolved training config.
    """
    split = manifest.get("split") or manifest.get("held_out") or {}
    config = manifest.get("config") or manifest.get("train_config") or {}
    size = split.get("val_set_size", config.get("val_set_size"))
    seed = split.get("seed", manifest.get("split_seed", config.get("seed")))
    if size is None or seed is None or float(size) <= 0:
        return None  # no split recorded, or trained on every row
    return float(size), int(seed)


def to_example(index: int, row: dict[str, Any]) -> Example:
    """Split a ``{"messages": [...]}`` row into the prompt turns and the reference answer."""
    messages = row.get("messages") or []
    if not messages or messages[-1].get("role") != "assistant":
        raise UserError(f"row {index}: the last message must be the assistant's reference answer")
    return Example(index=index, messages=list(messages[:-1]), reference=messages[-1]["content"])


def held_out_examples(
    suite: Suite,
    adapters: dict[str, tuple[dict[str, Any], Path | None]] | None = None,
    dataset_override: Path | None = None,
) -> HeldOut:
    """The suite's held-out examples.

    ``adapters`` maps model label -> (manifest, adapter folder). In order of preference:
    the ``held_out.jsonl`` rows an adapter saved (exactly what training never saw), when its
    manifest lists this dataset file (same sha256); else the manifest's split seed/size
    applied to the suite's dataset with ``training.data.split_rows``; else the suite's own
    split settings.
    """
    try:
        from training.data import load_rows, split_rows
    except ImportError as exc:  # the training package ships these; say so plainly if not
        raise UserError(f"training.data is not available ({exc})") from None

    path = dataset_override or suite.dataset_path()
    if not path.is_file():
        raise UserError(f"dataset not found: {path} (suite {suite.name}; override with --dataset)")
    digest = file_sha256(path)
    notes: list[str] = []
    for label, (manifest, adapter_dir) in (adapters or {}).items():
        rows = _saved_held_out(manifest, adapter_dir, digest)
        if rows:
            split = manifest.get("split") or {}
            return _finish(
                suite,
                rows,
                path,
                digest,
                split.get("val_set_size", len(rows)),
                split.get("seed", -1),
                f"manifest:{label} (held_out.jsonl)",
                notes,
            )
    report = load_rows(str(path), type=suite.dataset.type)
    if not report.ok:
        raise UserError(f"{path}: invalid rows\n{report.format_errors(limit=10)}")
    size, seed, source = suite.dataset.val_set_size, suite.dataset.seed, "suite"
    for label, (manifest, _) in (adapters or {}).items():
        recorded = split_from_manifest(manifest)
        if recorded is None:
            if _lists_dataset(manifest, digest):
                notes.append(
                    f"adapter {label} trained on every row of {path.name} (no held-out split): "
                    "its scores include rows it was trained on"
                )
            continue
        size, seed = recorded
        source = f"manifest:{label} (seed/size)"
        if not _lists_dataset(manifest, digest):
            notes.append(
                f"adapter {label} was trained on other data than {path.name}; "
                "its split settings are used but rows may overlap its training data"
            )
        break
    if size >= 1:
        size = int(size)
    _, held = split_rows(report.rows, size, seed)
    if suite.system_prompt:
        from training.data import with_system_prompt

        held = with_system_prompt(held, suite.system_prompt)
    return _finish(suite, held, path, digest, size, seed, source, notes)


def _lists_dataset(manifest: dict[str, Any], digest: str) -> bool:
    return any(d.get("sha256") == digest for d in manifest.get("datasets") or [])


def _saved_held_out(
    manifest: dict[str, Any], adapter_dir: Path | None, digest: str
) -> list[dict[str, Any]]:
    """Rows from the adapter's held_out.jsonl, when it was split from exactly this file."""
    if adapter_dir is None or not _lists_dataset(manifest, digest):
        return []
    if len(manifest.get("datasets") or []) != 1:
        return []  # split over several datasets: held_out.jsonl mixes them
    from training.manifest import read_held_out

    return read_held_out(adapter_dir)


def _finish(suite, rows, path, digest, size, seed, source, notes) -> HeldOut:
    if suite.dataset.limit:
        rows = rows[: suite.dataset.limit]
    if not rows:
        raise UserError(f"{path}: the held-out split is empty (val_set_size={size})")
    return HeldOut(
        examples=[to_example(i, row) for i, row in enumerate(rows)],
        path=path,
        sha256=digest,
        val_set_size=size,
        seed=seed,
        split_source=source,
        notes=notes,
    )
