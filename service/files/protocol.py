"""Request and response shapes of ``/v1/files``, OpenAI's names field for field
(``openai.types.FileObject``, ``FileDeleted``, the cursor page of ``files.list``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

FilePurpose = Literal[
    "assistants", "assistants_output", "batch", "batch_output", "fine-tune",
    "fine-tune-results", "vision", "user_data",
]


class FileObject(BaseModel):
    id: str
    bytes: int
    created_at: int
    filename: str
    object: Literal["file"] = "file"
    purpose: FilePurpose
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    id: str
    deleted: bool
    object: Literal["file"] = "file"
