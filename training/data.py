"""Dataset loaders and validation: every format becomes rows of OpenAI ``messages``.

Formats (``type``): ``chat`` (JSONL of ``{"messages": [...]}``), ``chat_csv`` (the same
records, one per CSV cell; BOM and CRLF fine), ``alpaca`` (JSON array or JSONL of
``instruction``/``input``/``output``), ``prompt_completion`` (JSONL of ``prompt``/
``completion``, strings or message lists), ``hf_datasets`` (a ``save_to_disk`` folder or a
parquet file). Like a hosted fine-tuning service, every bad row is reported with its
1-based line number (row number for ``hf_datasets``) and a reason before compute is spent.
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

FORMATS = ("chat", "alpaca", "prompt_completion", "chat_csv", "hf_datasets")
ROLES = ("system", "user", "assistant")


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
    path: str | Path, type: str | None = None, *, split: str | None = None
) -> ValidationReport:
    """Read and validate a dataset file or folder; ``type`` is auto-detected when None.

    Never raises for bad rows (they land in ``report.errors``); raises UserError when the
    file is missing, unreadable or of an unknown format.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"dataset not found: {path}")
    fmt = type or detect_format(path)
    if fmt not in FORMATS:
        raise UserError(f"unknown dataset type {fmt!r} (known: {', '.join(FORMATS)})")
    report = ValidationReport(path=str(path), format=fmt)
    if fmt == "chat_csv":
        records = _csv_records(path)
    elif fmt == "hf_datasets":
        records = _hf_records(path, split)
    else:
        records = _json_records(path)
    for line, record in records:
        if isinstance(record, RowError):
            report.errors.append(record)
            continue
        try:
            messages = to_messages(record, fmt)
            check_messages(messages)
        except ValueError as exc:
            report.errors.append(RowError(line, str(exc)))
            continue
        report.rows.append({"messages": messages})
        report.lines.append(line)
    return report


def detect_format(path: Path) -> str:
    """Guess the format from the extension and the keys of the first record."""
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in (".parquet", ".arrow"):
        return "hf_datasets"
    if suffix == ".csv":
        return "chat_csv"
    for _, record in _json_records(path):
        if isinstance(record, dict):
            if "messages" in record:
                return "chat"
            if "instruction" in record or "output" in record:
                return "alpaca"
            if "prompt" in record or "completion" in record:
                return "prompt_completion"
        break
    raise UserError(f"cannot tell the format of {path}: pass type (one of {', '.join(FORMATS)})")


def to_messages(record: Any, fmt: str) -> list[dict]:
    """Convert one record of any format into a messages list (ValueError with a reason)."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {_kind(record)}")
    if fmt == "hf_datasets":
        fmt = (
            "chat"
            if "messages" in record
            else "alpaca"
            if "instruction" in record
            else ("prompt_completion")
        )
    if fmt in ("chat", "chat_csv"):
        if "messages" not in record:
            raise ValueError("missing key 'messages'")
        messages = record["messages"]
        if not isinstance(messages, list):
            raise ValueError(f"'messages' must be a list, got {_kind(messages)}")
        return messages
    if fmt == "alpaca":
        for key in ("instruction", "output"):
            if not isinstance(record.get(key), str):
                raise ValueError(f"missing or non-string {key!r}")
        extra = record.get("input") or ""
        if not isinstance(extra, str):
            raise ValueError("'input' must be a string")
        user = (
            f"{record['instruction'].strip()}\n\n{extra.strip()}"
            if extra.strip()
            else (record["instruction"])
        )
        return [
            {"role": "user", "content": user},
            {"role": "assistant", "content": record["output"]},
        ]
    # prompt_completion: plain strings, or TRL's conversational lists of messages
    if "prompt" not in record or "completion" not in record:
        raise ValueError("missing key 'prompt' or 'completion'")
    prompt, completion = record["prompt"], record["completion"]
    prompt_msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    comp_msgs = (
        [{"role": "assistant", "content": completion}]
        if isinstance(completion, str)
        else completion
    )
    if not isinstance(prompt_msgs, list) or not isinstance(comp_msgs, list):
        raise ValueError("'prompt' and 'completion' must be strings or message lists")
    return prompt_msgs + comp_msgs


def check_messages(messages: list) -> None:
    """Raise ValueError with the first problem: bad shape, unknown role, empty content,
    turns out of order, or no final assistant answer."""
    if not messages:
        raise ValueError("no messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ValueError(f"message {i} is {_kind(msg)}, not an object")
        role = msg.get("role")
        if role is None:
            raise ValueError(f"message {i} has no 'role'")
        if role not in ROLES:
            raise ValueError(f"message {i} has unknown role {role!r} (use {', '.join(ROLES)})")
        content = msg.get("content")
        if not isinstance(content, str):
            raise ValueError(f"message {i} ({role}) content must be a string")
        if not content.strip():
            raise ValueError(f"message {i} ({role}) has empty content")
        if role == "system" and i != 0:
            raise ValueError(f"message {i}: a system message may only come first")
    turns = [m["role"] for m in messages if m["role"] != "system"]
    if "assistant" not in turns:
        raise ValueError("no assistant turn")
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError("turns must alternate user/assistant, starting with user")
    if turns[-1] != "assistant":
        raise ValueError("the last message must be the assistant's answer")


def with_system_prompt(rows: list[dict], system_prompt: str | None) -> list[dict]:
    """Rows with ``system_prompt`` prepended where a row has no system message."""
    if not system_prompt:
        return rows
    out = []
    for row in rows:
        msgs = row["messages"]
        if msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": system_prompt}, *msgs]
        out.append({"messages": msgs})
    return out


def check_lengths(report: ValidationReport, tokenizer, sequence_len: int) -> None:
    """Move rows longer than ``sequence_len`` tokens (chat template applied) to the errors."""
    from training.chat_format import encode_for_training

    too_long = {}
    for row, line in zip(report.rows, report.lines, strict=True):
        n = len(encode_for_training(tokenizer, row["messages"])["input_ids"])
        if n > sequence_len:
            too_long[line] = f"too long: {n} tokens > sequence_len {sequence_len}"
    if too_long:
        report.drop_rows(too_long)


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


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(
        type(value), type(value).__name__
    )


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


def prepare_data(config: TrainConfig, tokenizer) -> PreparedData:
    """Load every dataset, validate (format, then length against ``sequence_len``), split.

    The split is taken on the format-validated rows, in dataset order, with
    ``training.data.split_rows(rows, val_set_size, seed)``, so anyone can reproduce it from
    the files alone. Raises UserError with a line-numbered report unless drop_invalid_rows.
    """
    rows, infos, too_long = _load_specs(config, config.datasets, tokenizer)
    if not rows:
        raise UserError("no valid training rows")
    held = set(held_out_indices(len(rows), config.val_set_size, config.seed))
    if len(held) >= len(rows):
        raise UserError(f"val_set_size {config.val_set_size} leaves no training rows")
    rows = with_system_prompt(rows, config.system_prompt)
    train = [r for i, r in enumerate(rows) if i not in held and i not in too_long]
    held_out = [r for i, r in enumerate(rows) if i in held and i not in too_long]
    if not train:
        raise UserError("no training rows left after dropping invalid rows")
    if config.val_datasets:
        val_rows, val_infos, val_long = _load_specs(config, config.val_datasets, tokenizer)
        held_out = [
            r
            for i, r in enumerate(with_system_prompt(val_rows, config.system_prompt))
            if i not in val_long
        ]
        infos += [{**info, "role": "validation"} for info in val_infos]
    dropped = sum(info["invalid_rows"] for info in infos)
    held_out, duplicates = _without_training_rows(held_out, train)
    return PreparedData(train, held_out, infos, sorted(held), dropped, duplicates)


def _without_training_rows(held_out: list[dict], train: list[dict]) -> tuple[list[dict], int]:
    """Held-out rows minus exact copies of a training row (a dataset's duplicates would
    otherwise put trained-on rows into the evaluation set); returns them and the count."""
    from training.manifest import row_fingerprint

    trained = {row_fingerprint(r["messages"]) for r in train}
    kept = [r for r in held_out if row_fingerprint(r["messages"]) not in trained]
    return kept, len(held_out) - len(kept)


def _load_specs(config, specs, tokenizer) -> tuple[list[dict], list[dict], set[int]]:
    """Rows of ``specs`` in order, manifest entries, and indices of too-long rows.

    Raises UserError with the line-numbered report unless drop_invalid_rows.
    """
    rows: list[dict] = []
    infos: list[dict[str, Any]] = []
    too_long: set[int] = set()
    for spec in specs:
        report = load_rows(spec.path, spec.type, split=spec.split)
        offset = len(rows)
        valid = len(report.rows)
        rows.extend(report.rows)
        # Length errors are found after the split is fixed so they never shift it.
        length_report = _copy_report(report, config.system_prompt)
        check_lengths(length_report, tokenizer, config.sequence_len)
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
            }
        )
    return rows, infos, too_long


def _copy_report(report, system_prompt):
    return ValidationReport(
        path=report.path,
        format=report.format,
        rows=with_system_prompt(list(report.rows), system_prompt),
        errors=list(report.errors),
        lines=list(report.lines),
    )


def tokenize_rows(rows: list[dict], tokenizer):
    """A ``datasets.Dataset`` of ``input_ids`` + ``completion_mask`` (TRL's processed form)."""
    import datasets

    from training.chat_format import encode_for_training

    return datasets.Dataset.from_list([encode_for_training(tokenizer, r["messages"]) for r in rows])
