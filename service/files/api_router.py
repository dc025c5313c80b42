"""Routes of ``/v1/files`` (thin: parse, call FilesService, return). A file belongs to
the uploading key's project; other projects' keys get 404 (``service.tenancy``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse

from service.deps import UserAuth
from service.errors import ErrorResponse
from service.files.protocol import FileDeleted, FileList, FileObject
from service.files.serving import FilesService
from service.tenancy import project_of, scope_of

router = APIRouter(
    prefix="/v1/files",
    tags=["files"],
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
               413: {"model": ErrorResponse}},
)


def files_service(request: Request) -> FilesService:
    return request.app.state.files_service


@router.post("", response_model=FileObject)
async def create_file(
    request: Request,
    _: UserAuth,
    file: Annotated[UploadFile, File(description="JSONL/JSON/CSV dataset")],
    purpose: Annotated[str, Form()],
) -> FileObject:
    return await files_service(request).create(file, purpose, project_of(request))


@router.get("", response_model=FileList)
def list_files(
    request: Request,
    _: UserAuth,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    return files_service(request).list(purpose=purpose, after=after, limit=limit, order=order,
                                       project=scope_of(request))


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(request: Request, _: UserAuth, file_id: str) -> FileObject:
    return files_service(request).retrieve(file_id, scope_of(request))


@router.get("/{file_id}/content")
def file_content(request: Request, _: UserAuth, file_id: str) -> FileResponse:
    path, filename = files_service(request).content_path(file_id, scope_of(request))
    return FileResponse(path, media_type="application/octet-stream", filename=filename)


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(request: Request, _: UserAuth, file_id: str) -> FileDeleted:
    return files_service(request).delete(file_id, scope_of(request))
