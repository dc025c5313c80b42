"""Batches logic: create, list, retrieve and cancel (the runner does the work)."""

from __future__ import annotations

import asyncio
from typing import Any

from service.batches.protocol import (
    TERMINAL_BATCH_STATUSES,
    Batch,
    BatchCreateRequest,
    BatchList,
)
from service.batches.runner import BATCH_PRIORITY, BatchRunner, Execute
from service.batches.store import BatchStore, now
from service.errors import BadRequest, NotFound, Overloaded
from service.ids import new_id
from service.tenancy import check_model, in_scope

COMPLETION_WINDOW_S = {"24h": 24 * 3600}


class BatchesService:
    def __init__(self, store: BatchStore, runner: BatchRunner) -> None:
        self.store = store
        self.runner = runner

    async def create(self, request: BatchCreateRequest, scope: str | None = None) -> Batch:
        """Queue a batch over an input file ``scope`` may see (None: any, admin); the batch
        belongs to the file's project (the creating user key's own)."""
        files = self.runner.files()
        record = await asyncio.to_thread(files.store.get_file, request.input_file_id)
        if record is None or not in_scope(record["project"], scope):  # as if absent
            raise NotFound(f"No such File object: {request.input_file_id}",
                           param="input_file_id")
        if record["purpose"] != "batch":
            raise BadRequest(f"file {request.input_file_id!r} has purpose "
                             f"{record['purpose']!r}; upload the input with purpose 'batch'",
                             param="input_file_id", code="invalid_file")
        batch = await asyncio.to_thread(
            self.store.add, batch_id=new_id("batch"), endpoint=request.endpoint,
            input_file_id=request.input_file_id, completion_window=request.completion_window,
            metadata=request.metadata, project=record["project"],
            expires_at=now() + COMPLETION_WINDOW_S[request.completion_window])
        self.runner.wake()
        return await self._object(batch)

    async def retrieve(self, batch_id: str, project: str | None = None) -> Batch:
        return await self._object(await self._get(batch_id, project))

    async def list(self, *, after: str | None, limit: int,
                   project: str | None = None) -> BatchList:
        records = [r for r in await asyncio.to_thread(self.store.list)
                   if project is None or r["project"] == project]
        records.reverse()  # newest first, as OpenAI lists them
        if after:
            ids = [r["id"] for r in records]
            records = records[ids.index(after) + 1:] if after in ids else []
        data = [await self._object(r) for r in records[:limit]]
        return BatchList(data=data, has_more=len(records) > limit,
                         first_id=data[0].id if data else None,
                         last_id=data[-1].id if data else None)

    async def cancel(self, batch_id: str, project: str | None = None) -> Batch:
        batch = await self._get(batch_id, project)
        if batch["status"] in TERMINAL_BATCH_STATUSES:
            raise BadRequest(f"batch {batch_id} is already {batch['status']}; only a "
                             "validating or in-progress batch can be cancelled",
                             param="batch_id", code="invalid_state")
        await asyncio.to_thread(self.store.set_status, batch_id, "cancelling",
                                only_from=("validating", "in_progress"))
        self.runner.cancel(batch_id)
        return await self.retrieve(batch_id)

    async def _get(self, batch_id: str, project: str | None = None) -> dict[str, Any]:
        """The batch; 404 when it does not exist or belongs to another project (as if
        absent: ids of other projects do not leak). ``project`` None: any (admin)."""
        batch = await asyncio.to_thread(self.store.get, batch_id)
        if batch is None or (project is not None and batch["project"] != project):
            raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
        return batch

    async def _object(self, batch: dict[str, Any]) -> Batch:
        counts = await asyncio.to_thread(self.store.counts, batch["id"])
        fields = {k: v for k, v in batch.items() if k in Batch.model_fields}
        return Batch(**fields, request_counts=counts)


def online_executor(state: Any) -> Execute:
    """Run one batch request through the same serving code as the online endpoint."""
    from service.chat.protocol import ChatCompletionRequest
    from service.completions.protocol import CompletionRequest

    async def execute(url: str, body: dict[str, Any], project: str) -> dict[str, Any]:
        if url == "/v1/chat/completions":
            request: Any = ChatCompletionRequest.model_validate(body)
            serving = state.chat_serving
        else:
            request = CompletionRequest.model_validate(body)
            serving = state.completion_serving
        if request.stream:
            raise BadRequest("stream is not supported in a batch request", param="stream")
        # The batch's project may use its own and shared models only, as online.
        check_model(state, request.model, project)
        while True:
            try:
                return await serving.create(request, priority=BATCH_PRIORITY)
            except Overloaded:
                # Online requests fill the server: they go first; wait for a free slot
                # instead of failing the batch request.
                await asyncio.sleep(1.0)

    return execute
