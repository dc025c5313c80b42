"""Runs batches behind interactive traffic: one batch at a time, a bounded number of its
requests at once, each with a lower vLLM priority than any online request.

Interactive requests keep priority twice over: the engine runs vLLM's ``priority``
scheduling policy, so a waiting online request (priority 0) is scheduled before every
waiting batch request (``BATCH_PRIORITY``) and, when the KV cache runs short, batch
requests are preempted first; and the runner never holds more than ``concurrency`` engine
slots, so online requests always find room in the running batch.

Restart safety comes from the store: every answer is stored the moment it is complete, and
a restarted runner resumes the oldest unfinished batch with only its unanswered requests.

Several replicas (one runner each, one shared database) work on the same batch at once,
each request answered exactly once: a runner claims one request at a time under a lease
(``BatchStore.claim``), exactly one runner validates (``start``) and one finalizes
(``begin_finalizing``, the final status conditional on it), and a cancel recorded by any
replica (status ``cancelling``) is seen by the others at their next poll. An idle runner
looks for work every ``poll_s``, so a batch another replica left behind is finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from service.batches.input import read_lines
from service.batches.store import DEFAULT_LEASE_S, BatchStore, now
from service.errors import BadRequest, ServiceError, error_body, validation_message
from service.ids import new_id
from tuneserve.home import replica_id

log = logging.getLogger(__name__)
BATCH_PRIORITY = 1  # vLLM: lower runs first; online requests use 0
# (url, body, the batch's project) -> the response body of one request, as the online
# endpoint returns it to a key of that project.
Execute = Callable[[str, dict[str, Any], str], Awaitable[dict[str, Any]]]


class BatchRunner:
    def __init__(self, store: BatchStore, files: Callable[[], Any], execute: Execute | None,
                 concurrency: int, *, poll_s: float = 2.0,
                 lease_s: int = DEFAULT_LEASE_S) -> None:
        self.store = store
        self.files = files  # the FilesService (created by the jobs runtime)
        self.execute = execute
        self.concurrency = max(1, concurrency)
        self.poll_s = poll_s
        self.lease_s = lease_s
        # Leases are named after the replica (stable across restarts: a restarted runner
        # takes its predecessor's claimed requests back at once) and the worker slot.
        self.owner = f"{replica_id()}:batches"
        self._wake = asyncio.Event()
        self._cancelled: set[str] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batch-runner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake(self) -> None:
        """A batch was created or cancelled."""
        self._wake.set()

    def cancel(self, batch_id: str) -> None:
        self._cancelled.add(batch_id)
        self._wake.set()

    async def _idle(self) -> None:
        """Until woken or ``poll_s`` passed (work from other replicas is found by polling)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            batch = await asyncio.to_thread(self.store.next_active)
            if batch is None:
                await self._idle()
                continue
            try:
                if not await self._run(batch):
                    await self._idle()  # another replica holds the rest of it
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must fail this batch, not stop every batch
                log.exception("batch %s failed", batch["id"])
                await asyncio.to_thread(
                    self.store.set_status, batch["id"], "failed",
                    errors={"object": "list", "data": [
                        {"code": "server_error", "message": f"the batch failed: {exc}"}]})

    async def _run(self, batch: dict[str, Any]) -> bool:
        """Do this runner's share of the batch; True when it is settled, False when other
        replicas still hold some of it."""
        batch_id = batch["id"]
        if batch["status"] == "validating" and not await self._validate(batch):
            return True
        if batch["status"] in ("validating", "in_progress"):
            await self._answer_pending(batch)
            if (batch_id not in self._cancelled and now() < batch["expires_at"]
                    and await asyncio.to_thread(self.store.pending, batch_id)):
                return False  # answered by other replicas, or by us once their leases expire
        return await self._finalize(batch_id)

    async def _validate(self, batch: dict[str, Any]) -> bool:
        """Store the batch's requests; fail the batch with line-numbered errors otherwise."""
        try:
            path = self.files().path(batch["input_file_id"], batch["project"])
            requests, errors = await asyncio.to_thread(read_lines, path)
        except ServiceError as exc:  # the input file was deleted meanwhile
            requests, errors = [], [_error(exc.message, "input_file_id", None, exc.code)]
        else:
            errors = [_error(e.message, e.param, e.line or None, e.code) for e in errors]
        wrong_url = [r for r in requests if r.url != batch["endpoint"]]
        errors += [_error(f"url {r.url!r} differs from the batch's endpoint "
                          f"{batch['endpoint']!r}", "url", r.line, "invalid_url")
                   for r in wrong_url]
        if errors:
            await asyncio.to_thread(self.store.set_status, batch["id"], "failed",
                                    only_from=("validating",),
                                    errors={"object": "list", "data": errors})
            return False
        # False when another replica's runner started it first: join it in answering.
        await asyncio.to_thread(self.store.start, batch["id"], requests)
        return True

    async def _answer_pending(self, batch: dict[str, Any]) -> None:
        """Answer the batch's requests that no other replica holds, one claim at a time."""
        batch_id = batch["id"]

        async def worker(owner: str) -> None:
            while not self._stopping(batch):
                claimed = await asyncio.to_thread(self.store.claim, batch_id, owner,
                                                  limit=1, lease_s=self.lease_s)
                if not claimed:
                    return
                row = claimed[0]
                answer = await self._answer(row, batch["project"])
                await asyncio.to_thread(self.store.finish_request, batch_id, row["line"],
                                        *answer)

        # One owner per slot: a slot never takes a request another slot holds.
        workers = [asyncio.create_task(worker(f"{self.owner}:{n}"))
                   for n in range(self.concurrency)]
        cancel_watch = asyncio.create_task(self._until_cancelled(batch_id))
        running = set(workers)
        try:
            while running:
                done, _ = await asyncio.wait(running | {cancel_watch},
                                             return_when=asyncio.FIRST_COMPLETED)
                if cancel_watch in done:
                    # Requests in flight are aborted: left unanswered, so not in the output.
                    for task in running:
                        task.cancel()
                    await asyncio.gather(*running, return_exceptions=True)
                    return
                running -= done
                for task in done:
                    if task.exception() is not None:
                        raise task.exception()
        finally:
            cancel_watch.cancel()
            for task in workers:
                task.cancel()

    def _stopping(self, batch: dict[str, Any]) -> bool:
        return batch["id"] in self._cancelled or now() >= batch["expires_at"]

    async def _until_cancelled(self, batch_id: str) -> None:
        # A cancel on this replica wakes us; one on another is read from the store.
        while batch_id not in self._cancelled:
            self._wake.clear()
            await self._idle()
            batch = await asyncio.to_thread(self.store.get, batch_id)
            if batch is not None and batch["status"] == "cancelling":
                self._cancelled.add(batch_id)

    async def _answer(self, row: dict[str, Any], project: str) -> tuple[int, dict[str, Any]]:
        """(status code, response) for one request; errors become their OpenAI error body."""
        try:
            body = await self.execute(row["url"], row["body"], project)
            status = 200
        except ValidationError as exc:
            message, param = validation_message(exc)
            status, body = 400, error_body(BadRequest(message, param=param))
        except ServiceError as exc:
            status, body = int(exc.status_code), error_body(exc)
        return status, {"status_code": status, "request_id": body.get("id") or new_id("req"),
                        "body": body}

    async def _finalize(self, batch_id: str) -> bool:
        """Write the output and error files and end the batch (cancelled, expired or
        completed); False when another replica is finalizing it."""
        batch = await asyncio.to_thread(self.store.get, batch_id)
        if batch["status"] in ("failed", "completed", "expired", "cancelled"):
            self._cancelled.discard(batch_id)
            return True
        cancelled = batch_id in self._cancelled or batch["status"] == "cancelling"
        expired = not cancelled and now() >= batch["expires_at"]
        expected = batch["status"]  # the final status is set only from it: one writer wins
        if not cancelled and not expired:
            if not await asyncio.to_thread(self.store.begin_finalizing, batch_id,
                                           self.lease_s):
                return False
            expected = "finalizing"
        answered = await asyncio.to_thread(self.store.answered, batch_id)
        output = [_output_line(r) for r in answered if r["status_code"] == 200]
        errors = [_output_line(r) for r in answered if r["status_code"] != 200]
        if expired:
            errors += [{"id": new_id("batch_req"), "custom_id": r["custom_id"], "response": None,
                        "error": {"code": "batch_expired",
                                  "message": "this request could not be executed before the "
                                  "completion window expired"}}
                       for r in await asyncio.to_thread(self.store.pending, batch_id)]
        files = self.files()
        output_id = _write(files, output, f"{batch_id}_output.jsonl", batch["project"])
        error_id = _write(files, errors, f"{batch_id}_error.jsonl", batch["project"])
        status = "cancelled" if cancelled else "expired" if expired else "completed"
        won = await asyncio.to_thread(self.store.set_status, batch_id, status,
                                      only_from=(expected,), output_file_id=output_id,
                                      error_file_id=error_id)
        self._cancelled.discard(batch_id)
        if not won:  # another replica ended it first: its files are the batch's
            for file_id in filter(None, (output_id, error_id)):
                await asyncio.to_thread(files.delete, file_id, batch["project"])
            return True
        log.info("batch %s %s: %d answered, %d errors", batch_id, status, len(output),
                 len(errors))
        return True


def _error(message: str, param: str | None, line: int | None, code: str) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _output_line(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": new_id("batch_req"), "custom_id": row["custom_id"],
            "response": row["response"], "error": None}


def _write(files: Any, lines: list[dict[str, Any]], filename: str,
           project: str) -> str | None:
    """A ``batch_output`` file of the batch's ``project`` with ``lines``; None when there is
    nothing to write (as OpenAI leaves ``error_file_id`` empty for a batch without errors)."""
    if not lines:
        return None
    content = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    return files.add_result(content.encode(), filename, purpose="batch_output",
                            project=project).id
