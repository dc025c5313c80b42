"""Files logic: store an uploaded dataset after validating it with the training loaders.

A ``fine-tune`` upload is checked row by row with ``training.data.load_rows`` (the same
code the trainer runs), so a bad file is refused at upload with its line-numbered report
instead of failing a job minutes later.

A file belongs to the project of the key that uploaded it (a server-made file to the
project of its job or batch). ``project`` arguments scope a lookup: another project's file
is 404 as if absent; None (admin) sees every project's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import UploadFile

from service.batches.input import check_upload
from service.errors import BadRequest, NotFound, ServiceError
from service.files.protocol import FileDeleted, FileList, FileObject
from service.ids import new_id
from service.jobs.store import JobStore
from service.tenancy import DEFAULT_PROJECT, in_scope
from tuneserve.errors import UserError

# Purposes a client may upload (the others are files the server makes).
UPLOAD_PURPOSES = ("fine-tune", "batch")
# Extensions the dataset loaders read from a single uploaded file.
DATASET_SUFFIXES = (".jsonl", ".json", ".csv")
_CHUNK = 1 << 20


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "file_too_large"


def file_object(record: dict) -> FileObject:
    return FileObject(id=record["id"], bytes=record["bytes"], created_at=record["created_at"],
                      filename=record["filename"], purpose=record["purpose"])


class FilesService:
    """Create, list, read and delete uploaded fine-tuning files."""

    def __init__(self, store: JobStore, *, max_upload_bytes: int) -> None:
        self.store = store
        self.max_upload_bytes = max_upload_bytes

    async def create(self, upload: UploadFile, purpose: str,
                     project: str = DEFAULT_PROJECT) -> FileObject:
        """Validate and store one upload; raises BadRequest with the report on bad rows."""
        if purpose not in UPLOAD_PURPOSES:
            raise BadRequest(
                f"purpose {purpose!r} is not supported here: this server accepts files with "
                "purpose 'fine-tune' (training and validation data for fine-tuning jobs) or "
                "'batch' (a JSONL of requests for /v1/batches)",
                param="purpose", code="invalid_purpose",
            )
        filename = Path(upload.filename or "upload.jsonl").name  # never a client path
        suffix = Path(filename).suffix.lower()
        if purpose == "batch" and suffix != ".jsonl":
            raise BadRequest(f"file {filename!r}: a batch input file is JSON lines (.jsonl)",
                             param="file", code="invalid_file_format")
        if suffix not in DATASET_SUFFIXES:
            raise BadRequest(
                f"file {filename!r} has an unsupported extension; upload JSON lines (.jsonl), "
                "a JSON array (.json) or a chat CSV (.csv)",
                param="file", code="invalid_file_format",
            )
        file_id = new_id("file")
        path = self.store.files_dir / f"{file_id}{suffix}"
        size = await self._save(upload, path)
        try:
            check = check_upload if purpose == "batch" else validate_dataset
            rows = await asyncio.to_thread(check, path, filename)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        record = await asyncio.to_thread(self.store.add_file, file_id=file_id,
                                         filename=filename, purpose=purpose, size=size,
                                         path=path, rows=rows, project=project)
        return file_object(record)

    def add_local(self, source: Path, filename: str) -> FileObject:
        """Store a dataset the server itself provides (the demo job), validated like an upload."""
        file_id = new_id("file")
        path = self.store.files_dir / f"{file_id}{Path(filename).suffix.lower() or '.jsonl'}"
        path.write_bytes(Path(source).read_bytes())
        try:
            rows = validate_dataset(path, filename)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        record = self.store.add_file(file_id=file_id, filename=filename, purpose="fine-tune",
                                     size=path.stat().st_size, path=path, rows=rows)
        return file_object(record)

    def add_result(self, content: bytes, filename: str, purpose: str = "fine-tune-results",
                   project: str = DEFAULT_PROJECT) -> FileObject:
        """Store a file the server made: a job's results (``fine-tune-results``) or a
        batch's output and errors (``batch_output``), owned by the job's or batch's
        ``project``."""
        file_id = new_id("file")
        path = self.store.files_dir / f"{file_id}{Path(filename).suffix.lower()}"
        path.write_bytes(content)
        record = self.store.add_file(file_id=file_id, filename=filename,
                                     purpose=purpose, size=len(content), path=path, rows=None,
                                     project=project)
        return file_object(record)

    async def _save(self, upload: UploadFile, path: Path) -> int:
        size = 0
        try:
            with path.open("wb") as out:
                while chunk := await upload.read(_CHUNK):
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        raise PayloadTooLarge(
                            f"file is larger than the upload limit of "
                            f"{self.max_upload_bytes / 1e6:g} MB (TUNESERVE_JOBS_MAX_UPLOAD_MB)",
                            param="file",
                        )
                    out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if size == 0:
            path.unlink(missing_ok=True)
            raise BadRequest("the uploaded file is empty", param="file", code="invalid_file")
        return size

    def list(self, *, purpose: str | None = None, after: str | None = None, limit: int = 10000,
             order: str = "desc", project: str | None = None) -> FileList:
        records = self.store.list_files(purpose=purpose, project=project)
        if order == "desc":
            records.reverse()
        if after:
            ids = [r["id"] for r in records]
            records = records[ids.index(after) + 1:] if after in ids else []
        page = records[:limit]
        data = [file_object(r) for r in page]
        return FileList(data=data, has_more=len(records) > limit,
                        first_id=data[0].id if data else None,
                        last_id=data[-1].id if data else None)

    def retrieve(self, file_id: str, project: str | None = None) -> FileObject:
        return file_object(self._get(file_id, project))

    def content_path(self, file_id: str, project: str | None = None) -> tuple[Path, str]:
        record = self._get(file_id, project)
        return Path(record["path"]), record["filename"]

    def path(self, file_id: str, project: str | None = None) -> Path:
        """Stored path of a live file (NotFound otherwise)."""
        return Path(self._get(file_id, project)["path"])

    def delete(self, file_id: str, project: str | None = None) -> FileDeleted:
        record = self._get(file_id, project)
        self.store.delete_file(file_id)
        # Jobs copy nothing: a queued job that still needs this file fails at start with a
        # clear reason. Keep the bytes for running jobs, drop them otherwise.
        if not self._used_by_active_job(file_id):
            Path(record["path"]).unlink(missing_ok=True)
        return FileDeleted(id=file_id, deleted=True)

    def _used_by_active_job(self, file_id: str) -> bool:
        jobs, _ = self.store.list_jobs(limit=10_000,
                                       statuses=frozenset({"validating_files", "queued",
                                                           "running"}))
        return any(file_id in (j["training_file"], j["validation_file"]) for j in jobs)

    def _get(self, file_id: str, project: str | None = None) -> dict:
        """The live file; 404 when absent or another project's (the same answer)."""
        record = self.store.get_file(file_id)
        if record is None or not in_scope(record["project"], project):
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return record


def validate_dataset(path: Path, filename: str) -> int:
    """Row count of a valid dataset; BadRequest with the line-numbered report otherwise."""
    from training.data import load_rows

    try:
        report = load_rows(path)
    except UserError as exc:
        raise BadRequest(f"{filename}: {exc}", param="file", code="invalid_file_format") from None
    report.path = filename  # the report names the client's file, not our storage path
    if not report.ok:
        raise BadRequest(
            f"{filename} has {len(report.errors)} invalid row(s):\n{report.format_errors()}",
            param="file", code="invalid_file_format",
        )
    if not report.rows:
        raise BadRequest(f"{filename} has no training rows", param="file", code="invalid_file")
    return len(report.rows)


