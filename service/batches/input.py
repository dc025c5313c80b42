"""Reading a batch input file: one OpenAI batch request per JSON line.

Each line is ``{"custom_id": str, "method": "POST", "url": ENDPOINT, "body": {...}}``, as
OpenAI's Batch API takes it. The body itself is validated when its request runs (with the
same request model the online endpoint uses), so a bad body fails only its own line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from service.errors import BadRequest

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
MAX_REQUESTS = 50_000  # OpenAI's per-batch limit


@dataclass(frozen=True)
class BatchLine:
    line: int  # 1-based line number in the input file
    custom_id: str
    url: str
    body: dict


@dataclass(frozen=True)
class LineError:
    line: int
    message: str
    param: str | None = None
    code: str = "invalid_request"


def read_lines(path: Path) -> tuple[list[BatchLine], list[LineError]]:
    """Every request of the file and every line-numbered problem found in it."""
    requests: list[BatchLine] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                errors.append(LineError(number, f"not valid JSON: {exc}"))
                continue
            problem = _shape_problem(row)
            if problem is not None:
                errors.append(LineError(number, problem[1], param=problem[0]))
                continue
            if row["custom_id"] in seen:
                errors.append(LineError(number, f"custom_id {row['custom_id']!r} is used by an "
                                        "earlier line; each request needs its own",
                                        param="custom_id", code="duplicate_custom_id"))
                continue
            seen.add(row["custom_id"])
            requests.append(BatchLine(number, row["custom_id"], row["url"], row["body"]))
    if not requests and not errors:
        errors.append(LineError(0, "the file has no requests", code="empty_file"))
    if len(requests) > MAX_REQUESTS:
        errors.append(LineError(0, f"the file has {len(requests)} requests; a batch takes at "
                                f"most {MAX_REQUESTS}", code="too_many_requests"))
    return requests, errors


def _shape_problem(row: object) -> tuple[str | None, str] | None:
    if not isinstance(row, dict):
        return None, "each line must be a JSON object"
    unknown = set(row) - {"custom_id", "method", "url", "body"}
    if unknown:
        return sorted(unknown)[0], f"unknown field {sorted(unknown)[0]!r}"
    if not isinstance(row.get("custom_id"), str) or not row["custom_id"]:
        return "custom_id", "custom_id must be a non-empty string"
    if row.get("method") != "POST":
        return "method", "method must be \"POST\""
    if row.get("url") not in ENDPOINTS:
        return "url", f"url must be one of {', '.join(ENDPOINTS)}"
    if not isinstance(row.get("body"), dict):
        return "body", "body must be a JSON object (the request's parameters)"
    return None


def check_upload(path: Path, filename: str) -> int:
    """Request count of a valid batch input file; BadRequest with the report otherwise."""
    requests, errors = read_lines(path)
    if errors:
        shown = "\n".join(f"line {e.line}: {e.message}" for e in errors[:20])
        more = f"\n... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise BadRequest(f"{filename} is not a valid batch input file:\n{shown}{more}",
                         param="file", code="invalid_file_format")
    return len(requests)
