"""The job supervisor: runs queued jobs as ``tuneserve train`` worker processes.

It lives as an asyncio task in the serving process (or alone in ``tuneserve worker``) but
never trains there: each job is a subprocess in its own process group
(``start_new_session``), so an OOM or crash in training cannot take the API down and a
cancel can signal the whole group. The queue is the ``jobs`` table, so a restart loses
nothing, and several supervisors (one per replica) share it exactly once:

- A job is claimed (``JobStore.claim_next``) under a lease of ``lease_s`` seconds held by
  this supervisor's ``owner`` id and renewed at every poll. A supervisor whose renewal fails
  (its lease ran out and another claimed the job) SIGKILLs its worker at once and writes no
  outcome; every outcome write is conditional on the claim it read.
- A job whose claimer died (its lease ran out) is claimed by the next supervisor, which
  resumes it from its newest checkpoint (or fails it with the reason, as below).
- ``start()`` first recovers the jobs a previous process of the same replica
  (``replica_id``) left ``running``: a leftover worker is killed, then the job is re-queued
  to resume from its newest checkpoint (at most ``max_resume_attempts`` times) or marked
  failed with the reason. Jobs of other replicas are left to their leases.
- A worker that dies on a signal we did not send (kill -9, OOM killer) is resumed the same way.
- A cancel recorded by any replica (``cancel_requested``) is seen by the owner at its next
  poll.
- ``cancel()`` sends SIGTERM to the group (SIGKILL after ``cancel_grace_s``) and removes any
  adapter or checkpoint the job wrote.
- The worker's JSON-lines log (contract #1) becomes the job's events; checkpoint folders
  become its checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service.jobs.settings import JobsSettings
from service.jobs.store import JobStore, now
from service.jobs.train_config import job_processes
from service.process_group import signal_group, stop_group
from training.config import TrainConfig
from tuneserve.home import lease_owner, owner_replica, replica_id

log = logging.getLogger(__name__)

# Called with (job, adapter_dir) after a successful run; raising fails the job with the message.
OnSuccess = Callable[[dict[str, Any], Path], Awaitable[None]]
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_ERROR_TAIL_CHARS = 1500


def fine_tuned_model_name(base: str, suffix: str | None, job_id: str) -> str:
    """``ft:<base>:<suffix>:<job-id>`` (``ft:<base>:<job-id>`` without a suffix)."""
    return f"ft:{base}:{suffix}:{job_id}" if suffix else f"ft:{base}:{job_id}"


def adapter_dir(job: dict[str, Any]) -> Path:
    """Where the job's worker writes its adapter (the training config decides)."""
    return TrainConfig.model_validate(job["train_config"]).adapter_path


def checkpoints_dir(job: dict[str, Any]) -> Path:
    """Where the job's worker keeps its resumable checkpoints."""
    return TrainConfig.model_validate(job["train_config"]).checkpoint_dir


def checkpoint_steps(job: dict[str, Any]) -> list[tuple[int, Path]]:
    """Complete checkpoints of a job as (step, folder), oldest first.

    A folder counts once the HF Trainer wrote ``trainer_state.json`` (it is saved last),
    so a checkpoint cut short by kill -9 is never resumed from.
    """
    root = checkpoints_dir(job)
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = _CHECKPOINT_RE.match(child.name)
            if match and (child / "trainer_state.json").is_file():
                found.append((int(match.group(1)), child))
    return sorted(found)


@dataclass
class _Run:
    process: asyncio.subprocess.Process
    terminating: bool = False
    lease_lost: bool = False
    last_metrics: dict[str, Any] = field(default_factory=dict)
    kill_task: asyncio.Task | None = None


class JobSupervisor:
    """Starts, watches, cancels and recovers fine-tuning worker processes."""

    def __init__(self, store: JobStore, settings: JobsSettings, *,
                 on_success: OnSuccess | None = None,
                 after_success: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.settings = settings
        self.on_success = on_success
        # Called with the job id once the job is `succeeded` (the automatic evaluation).
        self.after_success = after_success
        self._runs: dict[str, _Run] = {}
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._event_loop: asyncio.AbstractEventLoop | None = None
        # Who holds this supervisor's job leases: its replica, then a part unique per process
        # (even after a restart under the same pid); renewed on every poll.
        self.replica_id = settings.replica_id or replica_id()
        self.owner = lease_owner(self.replica_id)
        self.lease_s = settings.lease_s

    # ---- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Recover jobs a previous service left behind, then start taking jobs."""
        self._stopping = False
        self._event_loop = asyncio.get_running_loop()  # before recover(): it may wake()
        await asyncio.to_thread(self.recover)
        self._loop_task = asyncio.create_task(self._loop(), name="job-supervisor")

    async def stop(self) -> None:
        """Stop taking jobs; a running job is stopped and re-queued to resume on restart."""
        self._stopping = True
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for run in list(self._runs.values()):
            self._terminate(run)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.cancel_grace_s + 5)

    def wake(self) -> None:
        """Look at the queue now (after a job was created); callable from any thread."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._event_loop is None or running is self._event_loop:
            self._wake.set()
        else:
            self._event_loop.call_soon_threadsafe(self._wake.set)

    def recover(self) -> None:
        """Settle the jobs a previous process of this replica left ``running`` (or with no
        claim at all), and ``validating_files`` jobs whose creator died mid-way.

        Never a job another replica holds: a live one renews its lease, a dead one's job
        is claimed once its lease ran out (``claim_next``, resumed in ``_run``)."""
        stale = now() - self.lease_s  # a create validates in seconds, not a whole lease
        for job in self._jobs_with_status("validating_files"):
            if job["created_at"] < stale:
                self.store.update_job(job["id"], only_if_status={"validating_files"},
                                      status="queued")
        for job in self._jobs_with_status("running"):
            if job["claimed_by"] and owner_replica(job["claimed_by"]) != self.replica_id:
                continue
            self._kill_leftover_worker(job)
            self._ingest_log(job, None)
            if job["cancel_requested"]:
                self._settle_cancelled(job)
            else:
                self._resume_or_fail(
                    job,
                    "the service stopped while the job was running",
                )

    # ---- API entry points -------------------------------------------------------------
    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a job: a queued one at once, a running one by SIGTERM to its worker group.

        Returns the job as it is now (``running`` with the cancel pending until the worker
        exits, usually within seconds), None when it does not exist.
        """
        if await asyncio.to_thread(self._request_cancel, job_id):
            run = self._runs.get(job_id)
            if run is not None:
                self._terminate(run)
        return await asyncio.to_thread(self.store.get_job, job_id)

    def _request_cancel(self, job_id: str) -> bool:
        """Record the cancel; True when a running worker must be stopped."""
        if self.store.update_job(job_id, only_if_status={"validating_files", "queued"},
                                 status="cancelled", finished_at=now(), cancel_requested=1):
            self.store.add_event(job_id, "Job cancelled before it started.")
            return False
        if self.store.update_job(job_id, only_if_status={"running"}, cancel_requested=1):
            self.store.add_event(job_id, "Cancellation requested; stopping the training process.")
            return True
        return False

    # ---- the queue --------------------------------------------------------------------
    async def _loop(self) -> None:
        # ``_stopping`` ends the loop even when the cancel from stop() is lost: Python 3.11's
        # wait_for can swallow a cancellation that arrives as the wake event fires (a job
        # cancel wakes the loop), which left stop() awaiting this task forever.
        while not self._stopping:
            try:
                await self._start_ready_jobs()
            except Exception:  # keep the supervisor alive whatever one job does
                log.exception("job supervisor: could not start a job")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
            self._wake.clear()

    async def _start_ready_jobs(self) -> None:
        # Count the tasks, not ``_runs``: a task created here registers its run only once
        # it first runs, so counting runs would claim every queued job at once.
        while len(self._tasks) < self.settings.max_concurrent and not self._stopping:
            job = await asyncio.to_thread(self._claim_next)
            if job is None:
                return
            task = asyncio.create_task(self._run(job), name=f"job-{job['id']}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _claim_next(self) -> dict[str, Any] | None:
        """Claim the oldest queued job (``running``, leased to this supervisor); None when
        none is queued."""
        return self.store.claim_next(self.owner, self.lease_s)

    async def _run(self, job: dict[str, Any]) -> None:
        """Run one job to its end. Whatever goes wrong in here (a store error, a bug while
        reading the worker's log) fails the job with the reason and stops its worker: a job
        is never left ``running`` with an orphaned worker and an exception nobody saw."""
        job_id = job["id"]
        try:
            if job.get("taken_over_from") and not await asyncio.to_thread(self._take_over, job):
                return
            await self._run_job(job)
        except Exception as exc:
            log.exception("job supervisor: job %s broke while it was being supervised", job_id)
            run = self._runs.pop(job_id, None)
            if run is not None:
                await self._stop_worker(run)
            await asyncio.to_thread(
                self._fail, job, f"the job supervisor failed while running the job: "
                f"{exc.__class__.__name__}: {exc}", "supervisor_error",
                only_if_status={"running"})
        finally:
            self.wake()

    def _take_over(self, job: dict[str, Any]) -> bool:
        """A job claimed after its previous claimer's lease ran out (that replica died):
        record what its worker logged, then go on from the newest checkpoint (True) or
        settle it, cancelled or failed with the reason (False)."""
        self._ingest_log(job, None)
        if job["cancel_requested"]:
            self._settle_cancelled(job)
            return False
        reason = (f"the supervisor running the job ({job['taken_over_from']}) stopped renewing "
                  f"its lease of {self.lease_s}s")
        detail = self._resume_refusal(job, attempts=job["attempts"] - 1)
        if detail is None:
            self.store.add_event(job["id"], f"{reason[0].upper()}{reason[1:]}; this "
                                 f"supervisor ({self.owner}) took the job over.", level="warn")
            return True
        self._fail(job, f"{reason}; {detail}", "interrupted")
        return False

    def _prepare_run(self, job: dict[str, Any]) -> Path:
        """Write the worker's config (resuming when a checkpoint exists); returns its path."""
        job_id = job["id"]
        run_dir = self.store.runs_dir / job_id
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoints = checkpoint_steps(job)
        config = dict(job["train_config"], resume_from_checkpoint=bool(checkpoints))
        config_path = run_dir / "train.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        if checkpoints:
            self.store.add_event(job_id, f"Resuming training from checkpoint at step "
                                 f"{checkpoints[-1][0]}.", level="warn")
        else:
            processes = job_processes(job)
            self.store.add_event(job_id, "Fine-tuning job started."
                                 + (f" ({processes} processes)" if processes > 1 else ""))
        return config_path

    def _poll(self, job: dict[str, Any], run: _Run) -> bool:
        """Renew the lease, ingest the worker's new log lines and checkpoints; True when a
        cancel is pending (one recorded by another replica or the CLI is honoured this way
        too). A lost lease sets ``run.lease_lost`` and records nothing."""
        if not self.store.renew_lease(job["id"], self.owner, self.lease_s):
            log.warning("job supervisor: lost the lease on job %s (another supervisor claimed "
                        "it); stopping its training process", job["id"])
            run.lease_lost = True
            return False
        current = self.store.get_job(job["id"])
        self._ingest_log(current, run)
        self._record_checkpoints(job, run)
        return bool(current["cancel_requested"])

    async def _run_job(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        config_path = await asyncio.to_thread(self._prepare_run, job)
        run_dir = config_path.parent
        worker_log = (run_dir / "worker.log").open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *self._train_command(job), str(config_path),
                "--log-file", str(run_dir / "train.jsonl"),
                stdin=asyncio.subprocess.DEVNULL, stdout=worker_log, stderr=worker_log,
                start_new_session=True,  # own process group: cancel signals all of it
            )
        except OSError as exc:
            worker_log.close()
            await asyncio.to_thread(self._fail, job, f"could not start the training process: "
                                    f"{exc}", "worker_start")
            return
        run = _Run(process)
        self._runs[job_id] = run  # popped by _run if anything below raises
        try:
            await asyncio.to_thread(self.store.update_job, job_id, pid=process.pid)
            while True:
                rc: int | None = None
                with contextlib.suppress(TimeoutError):
                    rc = await asyncio.wait_for(process.wait(), self.settings.poll_interval_s)
                cancel_pending = await asyncio.to_thread(self._poll, job, run)
                if run.lease_lost:
                    # Another supervisor owns the job now: stop training at once (two
                    # workers must never write one job's checkpoints) and record nothing.
                    if rc is None:
                        signal_group(process.pid, signal.SIGKILL)
                        await process.wait()
                    self._runs.pop(job_id, None)
                    return
                if rc is not None:
                    break
                if cancel_pending and not run.terminating:
                    self._terminate(run)
        finally:
            worker_log.close()
            if run.kill_task:
                run.kill_task.cancel()
        self._runs.pop(job_id, None)
        await self._finish(await asyncio.to_thread(self.store.get_job, job_id), rc, run)

    def _train_command(self, job: dict[str, Any]) -> list[str]:
        """``train_command``, or for ``num_processes`` N > 1 the multi-process launcher."""
        n = job_processes(job)
        if n == 1:
            return list(self.settings.train_command)
        port = str(_free_port())
        return [a.replace("{n}", str(n)).replace("{port}", port)
                for a in self.settings.multi_process_command]

    async def _stop_worker(self, run: _Run) -> None:
        """SIGTERM the worker's group, SIGKILL after the grace period, and reap it."""
        await stop_group(run.process, self.settings.cancel_grace_s)
        if run.kill_task:
            run.kill_task.cancel()

    async def _finish(self, job: dict[str, Any], rc: int, run: _Run) -> None:
        if not await asyncio.to_thread(self.store.renew_lease, job["id"], self.owner,
                                       self.lease_s):
            log.warning("job supervisor: lost the lease on job %s as its worker exited; "
                        "leaving its outcome to the supervisor that claimed it", job["id"])
            return
        # Registering the adapter may take longer than a lease: keep renewing meanwhile.
        keeper = asyncio.create_task(self._keep_lease(job["id"]))
        try:
            adapter = adapter_dir(job)
            if (not job["cancel_requested"] and not self._stopping and rc == 0
                    and (adapter / "adapter_config.json").is_file()):
                await asyncio.to_thread(self.store.update_job, job["id"], pid=None)
                await self._succeed(job, adapter, run)
            else:
                await asyncio.to_thread(self._settle_unsuccessful, job, rc)
        finally:
            keeper.cancel()

    async def _keep_lease(self, job_id: str) -> None:
        """Renew the lease on a job every poll until cancelled (while it is being settled)."""
        while await asyncio.to_thread(self.store.renew_lease, job_id, self.owner, self.lease_s):
            await asyncio.sleep(self.settings.poll_interval_s)

    def _settle_unsuccessful(self, job: dict[str, Any], rc: int | None) -> None:
        """A worker that exited without an adapter: cancelled, stopped with the service,
        killed (resumable) or failed."""
        job_id = job["id"]
        self.store.update_job(job_id, pid=None, owner=job["claimed_by"])
        if job["cancel_requested"]:
            self._settle_cancelled(job)
        elif self._stopping:
            self.store.update_job(job_id, only_if_status={"running"}, owner=job["claimed_by"],
                                  status="queued")
            self.store.add_event(job_id, "The service stopped during training; the job resumes "
                                 "from its last checkpoint when the service starts again.",
                                 level="warn")
        elif rc is not None and rc < 0:
            self._resume_or_fail(job, f"the training process was killed by signal {-rc}")
        else:
            self._fail(job, self._failure_reason(job, rc), "training_failed")

    async def _succeed(self, job: dict[str, Any], adapter: Path, run: _Run) -> None:
        job_id = job["id"]
        name = fine_tuned_model_name(job["model"], job["suffix"], job_id)
        try:
            if self.on_success is not None:
                await self.on_success(dict(job, fine_tuned_model=name), adapter)
        except Exception as exc:  # the registry's checks refused the adapter
            await asyncio.to_thread(self._fail, job, f"the trained adapter could not be served: "
                                    f"{exc}", "adapter_rejected")
            return
        tokens = run.last_metrics.get("trained_tokens", job["trained_tokens"])
        recorded = await asyncio.to_thread(self._record_success, job, name, adapter, tokens)
        if recorded and self.after_success is not None:
            self.after_success(job_id)

    # ---- outcomes ---------------------------------------------------------------------
    # The events go in before the status: a client that sees the final status (it reads
    # from another thread) then finds the events that go with it.
    def _record_success(self, job: dict[str, Any], name: str, adapter: Path,
                        tokens: int | None) -> bool:
        job_id = job["id"]
        if not self.store.renew_lease(job_id, job["claimed_by"], self.lease_s):
            log.warning("job supervisor: lost the lease on job %s while registering its "
                        "adapter; the supervisor that claimed it records the outcome", job_id)
            return False
        self.store.add_event(job_id, f"New fine-tuned model created: {name}")
        self.store.add_event(job_id, "The job has successfully completed.")
        self.store.update_job(job_id, owner=job["claimed_by"], status="succeeded",
                              fine_tuned_model=name,
                              finished_at=now(), adapter_path=str(adapter),
                              trained_tokens=tokens)
        return True

    def _resume_or_fail(self, job: dict[str, Any], reason: str) -> None:
        job_id = job["id"]
        detail = self._resume_refusal(job, attempts=job["attempts"])
        if detail is None:
            step = checkpoint_steps(job)[-1][0]
            if self.store.update_job(job_id, owner=job["claimed_by"], status="queued", pid=None):
                self.store.add_event(job_id, f"{reason[0].upper()}{reason[1:]}; the job is "
                                     f"queued to resume from the checkpoint at step {step}.",
                                     level="warn")
            self.wake()
            return
        self._fail(job, f"{reason}; {detail}", "interrupted")

    def _resume_refusal(self, job: dict[str, Any], *, attempts: int) -> str | None:
        """Why a job interrupted after ``attempts`` runs cannot resume; None when it can."""
        checkpoints = checkpoint_steps(job)
        if not checkpoints:
            return "no checkpoint had been saved yet, so it cannot resume; start a new job"
        if attempts > self.settings.max_resume_attempts:
            return (f"it was already resumed {attempts - 1} time(s) "
                    f"(max_resume_attempts={self.settings.max_resume_attempts})")
        return None

    def _fail(self, job: dict[str, Any], message: str, code: str, *,
              only_if_status: set[str] | None = None) -> None:
        if only_if_status and self.store.get_job(job["id"])["status"] not in only_if_status:
            return
        self.store.add_event(job["id"], f"Fine-tuning job failed: {message}", level="error")
        self.store.update_job(job["id"], only_if_status=only_if_status,
                              owner=job.get("claimed_by"), status="failed",
                              finished_at=now(), pid=None,
                              error={"code": code, "message": message, "param": None})

    def _settle_cancelled(self, job: dict[str, Any]) -> None:
        # Cancel leaves nothing servable behind: no adapter, no checkpoints.
        shutil.rmtree(adapter_dir(job), ignore_errors=True)
        shutil.rmtree(checkpoints_dir(job), ignore_errors=True)
        self.store.add_event(job["id"], "Job cancelled.")
        self.store.update_job(job["id"], owner=job.get("claimed_by"), status="cancelled",
                              finished_at=now(), pid=None)

    def _failure_reason(self, job: dict[str, Any], rc: int | None) -> str:
        """The worker's own error event if it wrote one, else the tail of its output."""
        run_dir = self.store.runs_dir / job["id"]
        errors = [e for e in _read_events(run_dir / "train.jsonl") if e.get("type") == "error"]
        if errors and errors[-1].get("message"):
            return str(errors[-1]["message"])
        tail = ""
        worker_log = run_dir / "worker.log"
        if worker_log.is_file():
            tail = worker_log.read_bytes()[-_ERROR_TAIL_CHARS:].decode("utf-8", "replace").strip()
        return f"the training process exited with code {rc}" + (f": {tail}" if tail else "")

    # ---- signals ----------------------------------------------------------------------
    def _terminate(self, run: _Run) -> None:
        if run.terminating or run.process.returncode is not None:
            return
        run.terminating = True
        signal_group(run.process.pid, signal.SIGTERM)
        run.kill_task = asyncio.create_task(self._kill_after_grace(run))

    async def _kill_after_grace(self, run: _Run) -> None:
        await asyncio.sleep(self.settings.cancel_grace_s)
        if run.process.returncode is None:
            log.warning("worker %s ignored SIGTERM; killing it", run.process.pid)
            signal_group(run.process.pid, signal.SIGKILL)

    def _kill_leftover_worker(self, job: dict[str, Any]) -> None:
        """Kill the worker a dead service left running (checked by its command line, so a
        recycled pid is never signalled)."""
        pid = job.get("pid")
        if not pid:
            return
        marker = str(self.store.runs_dir / job["id"])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
        except OSError:
            return
        if marker in cmdline:
            signal_group(pid, signal.SIGKILL)

    # ---- log and checkpoints ----------------------------------------------------------
    def _ingest_log(self, job: dict[str, Any], run: _Run | None) -> None:
        """Turn new complete lines of the worker's JSON-lines log into job events."""
        path = self.store.runs_dir / job["id"] / "train.jsonl"
        if not path.is_file():
            return
        offset = job["log_offset"]
        with path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1  # only whole lines; a half-written one waits
        if end == 0:
            return
        for line in chunk[:end].splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                self._add_log_event(job, record, run)
        self.store.update_job(job["id"], log_offset=offset + end)

    def _add_log_event(self, job: dict[str, Any], record: dict[str, Any], run: _Run | None) -> None:
        kind = record.get("type")
        metrics = {k: record[k] for k in ("step", "total_steps", "epoch", "learning_rate",
                                          "tokens_per_s", "trained_tokens") if k in record}
        if record.get("loss") is not None:
            metrics["train_loss"] = record["loss"]
        if record.get("eval_loss") is not None:
            metrics["valid_loss"] = record["eval_loss"]
        if run is not None:
            run.last_metrics.update(metrics)
        if "trained_tokens" in record:
            self.store.update_job(job["id"], trained_tokens=record["trained_tokens"])
        if kind in ("progress", "eval") and metrics:
            self._add_metrics_event(job["id"], metrics)
        elif kind == "error":
            self.store.add_event(job["id"], str(record.get("message") or "training error"),
                                 level="error", data=metrics or None)
        elif kind == "done":
            # The worker's done message is the adapter path on the server: not for clients.
            loss = metrics.get("train_loss")
            summary = f", average training loss={loss:.4f}" if loss is not None else ""
            self.store.add_event(job["id"], f"Training finished at step "
                                 f"{metrics.get('step', '?')}{summary}.", data=metrics or None)
        else:
            message = record.get("message") or str(kind)
            self.store.add_event(job["id"], str(message), data=metrics or None)

    def _add_metrics_event(self, job_id: str, metrics: dict[str, Any]) -> None:
        """One metrics event per step, as OpenAI lists them: a validation loss measured at
        a step that already logged its training loss joins that step's event."""
        latest = self.store.latest_metrics_event(job_id)
        if latest and (latest["data"] or {}).get("step") == metrics.get("step"):
            merged = {**latest["data"], **metrics}
            self.store.update_event(latest["id"], message=_metrics_message(merged), data=merged)
        else:
            self.store.add_event(job_id, _metrics_message(metrics), type="metrics", data=metrics)

    def _record_checkpoints(self, job: dict[str, Any], run: _Run) -> None:
        for step, path in checkpoint_steps(job):
            metrics = {"step": step}
            if "train_loss" in run.last_metrics:
                metrics["train_loss"] = run.last_metrics["train_loss"]
            if "valid_loss" in run.last_metrics:
                metrics["valid_loss"] = run.last_metrics["valid_loss"]
            if self.store.add_checkpoint(job["id"], step, path, metrics):
                self.store.add_event(job["id"], f"Checkpoint created at step {step}.")

    def _jobs_with_status(self, status: str) -> list[dict[str, Any]]:
        jobs, _ = self.store.list_jobs(limit=10_000, statuses=frozenset({status}))
        return jobs


def _free_port() -> int:
    """A free local port for the processes' rendezvous (two jobs may run at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_events(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)
    return out


def _metrics_message(metrics: dict[str, Any]) -> str:
    step = f"Step {metrics.get('step', '?')}/{metrics.get('total_steps', '?')}"
    parts = []
    if "train_loss" in metrics:
        parts.append(f"training loss={metrics['train_loss']:.4f}")
    if "valid_loss" in metrics:
        parts.append(f"validation loss={metrics['valid_loss']:.4f}")
    return f"{step}: {', '.join(parts)}" if parts else step
