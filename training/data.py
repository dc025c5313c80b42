"""Dataset loading, validation and preparation: every format becomes training rows.

Formats and row shapes live in :mod:`training.formats`. Files: JSONL, a JSON array, CSV
(one JSON record per cell for ``chat_csv``; named columns, mapped with ``columns``, for
every other type), a ``save_to_disk`` folder or a parquet file. Like a hosted fine-tuning
service, every bad row is reported with its 1-based line number (row number for
``hf_datasets``) and a reason before compute is spent; :func:`prepare_data` then checks
lengths against ``sequence_len``, counts duplicates and estimates the work.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneserve.errors import UserError

if TYPE_CHECKING:
    from training.config import TrainConfig

from training.formats import (
    FORMATS,
    PREFERENCE_FORMATS,
    ROLES,
    FormatOptions,
    detect,
    is_preference,
    preference_conversations,
    to_row,
)

__all__ = ["FORMATS", "ROLES", "FormatOptions", "load_rows", "prepare_data", "split_rows"]


@dataclass(frozen=True)
class RowError:
    """One rejected row: its 1-based line (or row) number and why."""

    line: int
    reason: str


@dataclass
class ValidationReport:
    """Rows that passed (as ``{"messages": [...]}``) and the errors of those that did not."""

    path: str
    format: str
    rows: list[dict] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    # 1-based line of each accepted row, parallel to ``rows`` (for later checks, e.g. length).
    lines: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line: format, valid rows, rejected rows."""
        total = len(self.rows) + len(self.errors)
        return (
            f"{self.path}: {self.format}, {total} rows, {len(self.rows)} valid, "
            f"{len(self.errors)} invalid"
        )

    def format_errors(self, limit: int = 20) -> str:
        """Line-numbered report of the first ``limit`` errors, then the summary."""
        unit = "row" if self.format == "hf_datasets" else "line"
        lines = [f"{unit} {e.line}: {e.reason}" for e in self.errors[:limit]]
        if len(self.errors) > limit:
            lines.append(f"... and {len(self.errors) - limit} more")
        lines.append(self.summary())
        return "\n".join(lines)

    def drop_rows(self, bad_lines: dict[int, str]) -> None:
        """Move the rows at ``bad_lines`` (line -> reason) from ``rows`` to ``errors``."""
        keep_rows, keep_lines = [], []
        for row, line in zip(self.rows, self.lines, strict=True):
            if line in bad_lines:
                self.errors.append(RowError(line, bad_lines[line]))
            else:
                keep_rows.append(row)
                keep_lines.append(line)
        self.rows, self.lines = keep_rows, keep_lines
        self.errors.sort(key=lambda e: e.line)


def load_rows(
    path: str | Path,
    type: str | None = None,
    *,
    split: str | None = None,
    options: FormatOptions | None = None,
    file_type: str | None = None,
) -> ValidationReport:
    """Read and validate a dataset file or folder; ``type`` is auto-detected when None.

    ``options`` carries the dataset spec's field mappings; ``file_type`` (Axolotl's
    ``ds_type``: json, csv, parquet, arrow) overrides the guess from the extension.
    Never raises for bad rows (they land in ``report.errors``); raises UserError when the
    file is missing, unreadable or of an unknown format.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"dataset not found: {path}")
    reader = _reader(path, file_type)
    fmt = type or detect_format(path, reader)
    if fmt not in FORMATS:
        raise UserError(f"unknown dataset type {fmt!r} (known: {', '.join(FORMATS)})")
    report = ValidationReport(path=str(path), format=fmt)
    if reader == "hf":
        records = _hf_records(path, split)
    elif reader == "csv":
        records = _csv_records(path) if fmt == "chat_csv" else _csv_column_records(path)
    else:
        records = _json_records(path)
    for line, record in records:
        if isinstance(record, RowError):
            report.errors.append(record)
            continue
        try:
            row = to_row(record, fmt, options)
        except ValueError as exc:
            report.errors.append(RowError(line, str(exc)))
            continue
        report.rows.append(row)
        report.lines.append(line)
    return report


def _reader(path: Path, file_type: str | None) -> str:
    """json, csv or hf: how to read ``path``."""
    if file_type is not None:
        readers = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "hf", "arrow": "hf"}
        if file_type not in readers:
            raise UserError(f"unknown ds_type {file_type!r} (known: {', '.join(readers)})")
        return readers[file_type]
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in (".parquet", ".arrow"):
        return "hf"
    return "csv" if suffix == ".csv" else "json"


def detect_format(path: Path, reader: str | None = None) -> str:
    """Guess the format from the file kind and the keys of the first record."""
    reader = reader or _reader(path, None)
    if reader == "hf":
        return "hf_datasets"
    if reader == "csv":
        with path.open(encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), [])
        cells = [c for c in header if c.strip()]
        if len(cells) <= 1 and (
            not cells or cells[0].lstrip().startswith("{") or cells[0].strip() == "messages"
        ):
            return "chat_csv"
        fmt = detect({c.strip(): "" for c in cells})
        if fmt:
            return fmt
        raise UserError(
            f"cannot tell the format of {path} from its columns ({', '.join(cells)}): pass "
            f"type (one of {', '.join(FORMATS)}) and columns"
        )
    for _, record in _json_records(path):
        fmt = detect(record)
        if fmt:
            return fmt
        break
    raise UserError(f"cannot tell the format of {path}: pass type (one of {', '.join(FORMATS)})")


def with_system_prompt(rows: list[dict], system_prompt: str | None) -> list[dict]:
    """Rows with ``system_prompt`` prepended where a row has no system message."""
    if not system_prompt:
        return rows
    out = []
    for row in rows:
        key = "prompt" if is_preference(row) else "messages"
        if key not in row:  # raw text and segments have no conversation
            out.append(row)
            continue
        msgs = row[key]
        if msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": system_prompt}, *msgs]
        out.append({**row, key: msgs})
    return out


def check_lengths(
    report: ValidationReport,
    tokenizer,
    sequence_len: int,
    eot_tokens: tuple[str, ...] = ("<end_of_turn>",),
) -> list[int]:
    """Move rows longer than ``sequence_len`` tokens (chat template applied) to the errors;
    return the token count of every row (before the move, parallel to the rows)."""
    from training.chat_format import encode_row

    too_long = {}
    counts = []
    for row, line in zip(report.rows, report.lines, strict=True):
        # A preference pair is as long as its longer answer with the prompt.
        shapes = ([{"messages": m} for m in preference_conversations(row)]
                  if is_preference(row) else [row])
        n = max(len(encode_row(tokenizer, r, eot_tokens=eot_tokens)["input_ids"]) for r in shapes)
        counts.append(n)
        if n > sequence_len:
            too_long[line] = f"too long: {n} tokens > sequence_len {sequence_len}"
    if too_long:
        report.drop_rows(too_long)
    return counts


def split_rows(rows: list, val_set_size: float, seed: int) -> tuple[list, list]:
    """Deterministic seeded split into (train, held_out).

    ``val_set_size`` < 1 is a share of the rows (rounded), >= 1 a row count. The same rows,
    size and seed always give the same split; both parts keep the original row order.
    """
    n = len(rows)
    n_val = int(round(val_set_size * n)) if val_set_size < 1 else int(val_set_size)
    if n_val >= n and n_val > 0:
        raise UserError(f"val_set_size {val_set_size} leaves no training rows (of {n})")
    held = set(held_out_indices(n, val_set_size, seed))
    train = [r for i, r in enumerate(rows) if i not in held]
    held_out = [r for i, r in enumerate(rows) if i in held]
    return train, held_out


def held_out_indices(n: int, val_set_size: float, seed: int) -> list[int]:
    """Sorted indices (into the concatenated rows) of the held-out split."""
    n_val = int(round(val_set_size * n)) if val_set_size < 1 else int(val_set_size)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[:n_val])


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, or of all files of a folder (sorted by relative path)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(str(file.relative_to(path)).encode())
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# --- readers: yield (1-based line, record or RowError) ---------------------------------------


def _json_records(path: Path) -> Iterator[tuple[int, Any]]:
    text = _read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _json_array_records(text)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, RowError(number, f"invalid JSON: {exc.msg}")


def _json_array_records(text: str) -> Iterator[tuple[int, Any]]:
    """Records of a top-level JSON array, each with the line its object starts on."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted = 1, 0

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    while True:
        pos = _skip_ws(text, pos)
        if pos >= len(text):
            yield line_at(pos), RowError(line_at(pos), "invalid JSON: unterminated array")
            return
        if text[pos] == "]":
            return
        start = pos
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            # Unrecoverable inside an array: report where it broke and stop.
            err_line = text.count("\n", 0, exc.pos) + 1
            yield err_line, RowError(err_line, f"invalid JSON: {exc.msg}")
            return
        yield line_at(start), record
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _csv_records(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        start = 1
        for row in reader:
            line, start = start, reader.line_num + 1
            cells = [c for c in row if c.strip()]
            if not cells:
                continue
            if line == 1 and len(cells) == 1 and not cells[0].lstrip().startswith("{"):
                continue  # a header row such as "messages"
            if len(cells) != 1:
                yield (
                    line,
                    RowError(line, f"expected one JSON record per row, got {len(cells)} cells"),
                )
                continue
            try:
                yield line, json.loads(cells[0])
            except json.JSONDecodeError as exc:
                yield line, RowError(line, f"invalid JSON: {exc.msg}")


def _csv_column_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a CSV with a header of named columns, as dicts (map names with ``columns``)."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        start = 2
        for record in reader:
            line, start = start, reader.line_num + 1
            if None in record:
                yield line, RowError(line, "more cells than header columns")
                continue
            if not any((v or "").strip() for v in record.values()):
                continue
            yield line, {k.strip(): v for k, v in record.items()}


def _hf_records(path: Path, split: str | None) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.Dataset.from_parquet(str(path))
    except Exception as exc:  # datasets raises many types for a bad folder
        raise UserError(f"cannot read dataset {path}: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        name = split or ("train" if "train" in ds else next(iter(ds)))
        if name not in ds:
            raise UserError(f"dataset {path} has no split {name!r} (has {', '.join(ds)})")
        ds = ds[name]
    yield from enumerate(ds, start=1)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


# --- preparation: every dataset of a config loaded, length-checked and split -----------


@dataclass
class PreparedData:
    """Validated, split rows plus what the manifest records about them."""

    train: list[dict]
    held_out: list[dict]
    datasets: list[dict[str, Any]] = field(default_factory=list)
    held_out_indices: list[int] = field(default_factory=list)
    dropped_rows: int = 0
    # Held-out rows left out of held_out because a training row is an exact copy.
    held_out_duplicates: int = 0
    # Training rows that repeat an earlier training row (removed when deduplicated).
    duplicate_rows: int = 0
    deduplicated: bool = False
    train_tokens: int = 0


def prepare_data(config: TrainConfig, tokenizer) -> PreparedData:
    """Load every dataset, validate (format, then length against ``sequence_len``), split,
    then count (or, with ``dataset_exact_deduplication``, drop) duplicate training rows.

    The split is taken on the format-validated rows, in dataset order, with
    ``training.data.split_rows(rows, val_set_size, seed)``, so anyone can reproduce it from
    the files alone. Raises UserError with a line-numbered report unless drop_invalid_rows.
    """
    rows, infos, too_long, counts = _load_specs(config, config.datasets, tokenizer)
    if not rows:
        raise UserError("no valid training rows")
    held = set(held_out_indices(len(rows), config.val_set_size, config.seed))
    if len(held) >= len(rows):
        raise UserError(f"val_set_size {config.val_set_size} leaves no training rows")
    rows = with_system_prompt(rows, config.system_prompt)
    train_idx = [i for i in range(len(rows)) if i not in held and i not in too_long]
    held_out = [r for i, r in enumerate(rows) if i in held and i not in too_long]
    train_idx, duplicates = _duplicates(rows, train_idx, drop=config.dataset_exact_deduplication)
    train = [rows[i] for i in train_idx]
    if not train:
        raise UserError("no training rows left after dropping invalid rows")
    if config.val_datasets:
        val_rows, val_infos, val_long, _ = _load_specs(config, config.val_datasets, tokenizer)
        held_out = [
            r
            for i, r in enumerate(with_system_prompt(val_rows, config.system_prompt))
            if i not in val_long
        ]
        infos += [{**info, "role": "validation"} for info in val_infos]
    dropped = sum(info["invalid_rows"] for info in infos)
    held_out, held_dupes = _without_training_rows(held_out, train)
    return PreparedData(
        train,
        held_out,
        infos,
        sorted(held),
        dropped,
        held_dupes,
        duplicate_rows=duplicates,
        deduplicated=config.dataset_exact_deduplication,
        train_tokens=sum(counts[i] for i in train_idx),
    )


def _duplicates(rows: list[dict], indices: list[int], *, drop: bool) -> tuple[list[int], int]:
    """``indices`` (minus repeats of an earlier row when ``drop``) and the repeat count."""
    from training.manifest import row_key

    seen: set[str] = set()
    kept, repeats = [], 0
    for i in indices:
        key = row_key(rows[i])
        if key in seen:
            repeats += 1
            if drop:
                continue
        seen.add(key)
        kept.append(i)
    return kept, repeats


def _without_training_rows(held_out: list[dict], train: list[dict]) -> tuple[list[dict], int]:
    """Held-out rows minus exact copies of a training row (a dataset's duplicates would
    otherwise put trained-on rows into the evaluation set); returns them and the count."""
    from training.manifest import row_key

    trained = {row_key(r) for r in train}
    kept = [r for r in held_out if row_key(r) not in trained]
    return kept, len(held_out) - len(kept)


def _load_specs(config, specs, tokenizer) -> tuple[list[dict], list[dict], set[int], list[int]]:
    """Rows of ``specs`` in order, manifest entries, indices of too-long rows and the token
    count of every row.

    Raises UserError with the line-numbered report unless drop_invalid_rows.
    """
    rows: list[dict] = []
    infos: list[dict[str, Any]] = []
    too_long: set[int] = set()
    counts: list[int] = []
    for spec in specs:
        report = load_rows(
            spec.path,
            spec.type,
            split=spec.split,
            options=spec.format_options(),
            file_type=spec.ds_type,
        )
        _check_method_data(config, spec, report)
        offset = len(rows)
        valid = len(report.rows)
        rows.extend(report.rows)
        # Length errors are found after the split is fixed so they never shift it.
        length_report = _copy_report(report, config.system_prompt)
        counts += check_lengths(
            length_report, tokenizer, config.sequence_len, tuple(config.eot_tokens)
        )
        long_lines = {e.line for e in length_report.errors} - {e.line for e in report.errors}
        too_long |= {offset + i for i, line in enumerate(report.lines) if line in long_lines}
        if length_report.errors and not config.drop_invalid_rows:
            raise UserError(
                f"dataset {spec.path} has invalid rows (set drop_invalid_rows: true to skip "
                "them):\n" + length_report.format_errors()
            )
        infos.append(
            {
                "path": str(spec.path),
                "type": report.format,
                "split": spec.split,
                "sha256": file_sha256(spec.path),
                "rows": valid,
                "invalid_rows": len(length_report.errors),
                "too_long_rows": len(long_lines),
            }
        )
    return rows, infos, too_long, counts


def _check_method_data(config, spec, report) -> None:
    """Preference pairs train with ``rl`` (DPO/ORPO) only, and ``rl`` trains on them only."""
    pairs = sum(is_preference(r) for r in report.rows)
    if config.rl and pairs < len(report.rows):
        raise UserError(
            f"rl: {config.rl} trains on preference pairs; dataset {spec.path} is type "
            f"{report.format} (use {' or '.join(PREFERENCE_FORMATS)} rows)"
        )
    if not config.rl and pairs:
        raise UserError(
            f"dataset {spec.path} holds preference pairs ({report.format}); train them with "
            "rl: dpo or rl: orpo (over the fine-tuning jobs API: method.type 'dpo')"
        )


def _copy_report(report, system_prompt):
    return ValidationReport(
        path=report.path,
        format=report.format,
        rows=with_system_prompt(list(report.rows), system_prompt),
        errors=list(report.errors),
        lines=list(report.lines),
    )


def tokenize_rows(rows: list[dict], tokenizer, eot_tokens: tuple[str, ...] = ("<end_of_turn>",)):
    """A ``datasets.Dataset`` of ``input_ids`` + ``completion_mask`` (TRL's processed form)."""
    import datasets

    from training.chat_format import encode_row

    return datasets.Dataset.from_list(
        [encode_row(tokenizer, r, eot_tokens=eot_tokens) for r in rows]
    )


def configure_tokenizer(config: TrainConfig, tokenizer) -> None:
    """Apply ``special_tokens`` and check ``chat_template`` / ``eot_tokens`` against the
    base model's tokenizer. A token outside the vocabulary is refused: adding one would
    resize the embeddings, which a served LoRA adapter cannot carry."""
    vocab = tokenizer.get_vocab()
    for kind, token in (config.special_tokens or {}).items():
        if token not in vocab:
            raise UserError(
                f"special_tokens.{kind} {token!r} is not in the base model's vocabulary "
                "(new tokens would need resized embeddings, which vLLM adapters cannot carry)"
            )
        setattr(tokenizer, kind, token)
    for token in config.eot_tokens:
        if token not in vocab:
            raise UserError(f"eot_tokens: {token!r} is not in the base model's vocabulary")
    if config.chat_template == "gemma3" and "<start_of_turn>" not in (
        tokenizer.chat_template or ""
    ):
        raise UserError(
            "chat_template gemma3 is refused: the base model's own template is not Gemma's "
            "(use tokenizer_default)"
        )


def estimate(config: TrainConfig, data: PreparedData) -> dict[str, Any]:
    """Steps, tokens and (from the last run on this base model, when there is one) the
    training time this run will take, before any compute is spent."""
    import math

    from training.manifest import read_manifest

    rows_per_step = config.micro_batch_size * config.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(len(data.train) / rows_per_step))
    steps = config.max_steps or math.ceil(steps_per_epoch * config.num_epochs)
    tokens = round(data.train_tokens * steps / steps_per_epoch)
    rate = None
    manifests = [read_manifest(p) for p in config.adapter_root.glob("*/") if p.name != config.name]
    runs = sorted(
        (
            m
            for m in manifests
            if m.get("base_model") == config.base_model and m.get("tokens_per_s")
        ),
        key=lambda m: m.get("created_at", ""),
    )
    if runs:
        rate = runs[-1]["tokens_per_s"]
    return {
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "tokens": tokens,
        "seconds": round(tokens / rate) if rate else None,
        "tokens_per_s_from": runs[-1]["name"] if runs else None,
    }


def data_check(config: TrainConfig, model_path: str | Path) -> str:
    """The checks training runs before any compute, as one summary line: every row valid
    and within ``sequence_len`` (else UserError with the line-numbered report), duplicate
    training rows, tokens, steps and (when a run on this base measured a speed) time."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    configure_tokenizer(config, tokenizer)
    data = prepare_data(config, tokenizer)
    work = estimate(config, data)
    too_long = sum(info.get("too_long_rows", 0) for info in data.datasets)
    parts = [
        f"{len(data.train)} training rows",
        f"{len(data.held_out)} held-out rows",
        f"{too_long} longer than sequence_len {config.sequence_len} (dropped)" if too_long else "",
        f"{data.duplicate_rows} duplicate rows" if data.duplicate_rows else "",
        f"about {work['tokens']} tokens in {work['steps']} steps",
        f"about {work['seconds']} s" if work["seconds"] else "",
    ]
    return "Data check: " + ", ".join(p for p in parts if p)
