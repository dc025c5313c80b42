"""Request and response shapes of ``/v1/batches``, OpenAI's names field for field
(``openai.types.Batch``, ``batch_create_params``, the cursor page of ``batches.list``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.batches.input import ENDPOINTS

BatchStatus = Literal["validating", "failed", "in_progress", "finalizing", "completed",
                      "expired", "cancelling", "cancelled"]
TERMINAL_BATCH_STATUSES = frozenset({"failed", "completed", "expired", "cancelled"})
Endpoint = Literal[ENDPOINTS]  # type: ignore[valid-type]


class BatchCreateRequest(BaseModel):
    # Every field OpenAI defines that changes the outcome is honoured; anything else is a
    # 400 naming it. ``output_expires_after`` is refused: output files here never expire.
    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: Endpoint
    completion_window: Literal["24h"]
    # Informational: stored and returned as sent (OpenAI: up to 16 string pairs).
    metadata: dict[str, str] | None = Field(None, max_length=16)


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    created_at: int
    errors: BatchErrors | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None = None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
