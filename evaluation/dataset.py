"""The rows a suite is scored on: the held-out split, never rows an adapter trained on.

Rows are read with the training loaders (``training.data.load_rows``) and split with the
same function training used (``training.data.split_rows``). When an adapter's manifest
records its split (seed and held-out size), that split wins over the suite's defaults,
so the evaluation set is exactly what the adapter never saw.

Contamination is an error: when an adapter recorded the rows it trained on
(``train_rows.sha256``, or a manifest that trained on every row of this very file), the
rows to score are checked against them and any overlap refuses the run, naming the count,
unless the caller allows it (``contamination="allow"``: score them, noted in the report) or
asks to drop those rows (``"exclude"``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from evaluation.suite import Suite
from tuneserve.errors import UserError

log = logging.getLogger(__name__)
Contamination = Literal["refuse", "allow", "exclude"]
CONTAMINATION_POLICIES: tuple[Contamination, ...] = ("refuse", "allow", "exclude")


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
    # A training row's per-turn "weight" is a loss setting, not part of the prompt.
    prompt = [{k: v for k, v in m.items() if k != "weight"} for m in messages[:-1]]
    return Example(index=index, messages=prompt, reference=messages[-1]["content"])


def held_out_examples(
    suite: Suite,
    adapters: dict[str, tuple[dict[str, Any], Path | None]] | None = None,
    dataset_override: Path | None = None,
    contamination: Contamination = "refuse",
) -> HeldOut:
    """The suite's held-out examples.

    ``adapters`` maps model label -> (manifest, adapter folder). In order of preference:
    the ``held_out.jsonl`` rows an adapter saved (exactly what training never saw), when its
    manifest lists this dataset file (same sha256); else the manifest's split seed/size
    applied to the suite's dataset with ``training.data.split_rows``; else the suite's own
    split settings. Then the contamination check (see the module docstring).
    """
    held = _held_out(suite, adapters, dataset_override)
    return check_contamination(held, adapters or {}, contamination)


def _held_out(
    suite: Suite,
    adapters: dict[str, tuple[dict[str, Any], Path | None]] | None,
    dataset_override: Path | None,
) -> HeldOut:
    try:
        from training.data import file_sha256, load_rows, split_rows
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
            continue  # trained on every row it listed: check_contamination counts them
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


def example_fingerprint(example: Example) -> str:
    from training.manifest import row_fingerprint

    return row_fingerprint(
        [*example.messages, {"role": "assistant", "content": example.reference}]
    )


def check_contamination(
    held: HeldOut,
    adapters: dict[str, tuple[dict[str, Any], Path | None]],
    policy: Contamination,
) -> HeldOut:
    """Count, per adapter, the rows to score that it trained on; refuse, note or drop them.

    Exact when the adapter saved its training-row fingerprints; otherwise an adapter whose
    manifest trained on every row of this very file (no split) overlaps on every row; with
    neither, the check cannot be made and the report says so.
    """
    from training.manifest import read_train_fingerprints

    fingerprints = [example_fingerprint(ex) for ex in held.examples]
    trained: dict[str, set[int]] = {}
    for label, (manifest, adapter_dir) in adapters.items():
        seen = read_train_fingerprints(adapter_dir) if adapter_dir else None
        if seen is not None:
            trained[label] = {i for i, f in enumerate(fingerprints) if f in seen}
        elif _lists_dataset(manifest, held.sha256) and split_from_manifest(manifest) is None:
            trained[label] = set(range(len(held.examples)))
        else:
            held.notes.append(
                f"adapter {label} did not record its training rows (no train_rows.sha256 "
                "where the evaluation runs): overlap with its training data was not checked"
            )
    overlap = {label: rows for label, rows in trained.items() if rows}
    if not overlap:
        return held
    counts = ", ".join(f"{len(rows)} of {len(held.examples)} for {label}"
                       for label, rows in overlap.items())
    if policy == "refuse":
        raise UserError(
            f"contaminated evaluation: rows to score were trained on ({counts}; dataset "
            f"{held.path.name}). Score rows the adapters never saw (--dataset, or the "
            "adapter's own held-out rows), drop these rows with --exclude-trained-rows, or "
            "score them anyway with --allow-contamination"
        )
    if policy == "allow":
        held.notes.append(f"contamination allowed by the caller: rows scored were trained on "
                          f"({counts}); those scores overstate the adapters")
        return held
    dropped = set().union(*overlap.values())
    held.examples = [ex for i, ex in enumerate(held.examples) if i not in dropped]
    if not held.examples:
        raise UserError(f"every row to score was trained on ({counts}): nothing left to score")
    held.notes.append(f"{len(dropped)} rows dropped because adapters trained on them ({counts})")
    return held


def _lists_dataset(manifest: dict[str, Any], digest: str) -> bool:
    """Whether the adapter trained on this file (validation files are not trained on)."""
    return any(d.get("sha256") == digest for d in _datasets(manifest, "train"))


def _datasets(manifest: dict[str, Any], role: str) -> list[dict[str, Any]]:
    entries = manifest.get("datasets") or []
    return [d for d in entries if (d.get("role") == "validation") == (role == "validation")]


def _saved_held_out(
    manifest: dict[str, Any], adapter_dir: Path | None, digest: str
) -> list[dict[str, Any]]:
    """Rows from the adapter's held_out.jsonl when they are exactly this file's held-out
    rows: its one validation file, or else the split of its one training file."""
    validation = _datasets(manifest, "validation")
    sources = validation or _datasets(manifest, "train")
    if adapter_dir is None or len(sources) != 1 or sources[0].get("sha256") != digest:
        return []  # several files: held_out.jsonl mixes them
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
