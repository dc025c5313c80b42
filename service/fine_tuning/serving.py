"""Fine-tuning jobs logic: validate a job request, queue it, and present jobs, events and
checkpoints in OpenAI's shapes. Training itself happens in the supervisor's worker
processes (``service.jobs.supervisor``).

A job belongs to the project of its training file: a user key's own project (it sees no
other files), or the project an admin made it for. ``project`` arguments scope a lookup
(another project's job or file is 404 as if absent; None, an admin, sees all)."""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path
from typing import Any

from service.adapters.checks import check_name
from service.errors import AdapterRejected, BadRequest, ModelNotFound, NotFound, ServiceError
from service.files.serving import validate_dataset
from service.fine_tuning.protocol import (
    CheckpointList,
    EventList,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    JobCreateRequest,
    JobList,
    Method,
)
from service.ids import new_id
from service.jobs.store import JobStore, now
from service.jobs.supervisor import JobSupervisor, fine_tuned_model_name
from service.jobs.train_config import (
    PROCESSES_KEY,
    build_train_config,
    resolve_hyperparameters,
)
from service.tenancy import in_scope
from training.auto import MIN_ROWS_TO_HOLD_OUT, held_out_rows
from tuneserve.errors import UserError
from tuneserve.job_status import TERMINAL_STATUSES

# Suffixes become part of a served model id: no ':' (the id's separator), '/' or spaces.
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")


class FineTuningService:
    """Create, list, retrieve and cancel jobs; list their events and checkpoints.

    ``bases`` maps each base model id that can be fine-tuned here (the served base) to its
    checkpoint folder; ``max_lora_rank`` is the largest rank the engine serves;
    ``max_processes`` the most training processes a job may ask for (``num_processes``).
    """

    def __init__(self, store: JobStore, supervisor: JobSupervisor, *, bases: dict[str, Path],
                 max_lora_rank: int | None = None, max_processes: int = 1) -> None:
        self.store = store
        self.supervisor = supervisor
        self.bases = bases
        self.max_lora_rank = max_lora_rank
        self.max_processes = max_processes

    # ---- create -----------------------------------------------------------------------
    def create(self, request: JobCreateRequest, project: str | None = None) -> FineTuningJob:
        """Validate ``request`` and queue the job; 400/404 with the parameter on bad input."""
        if request.model not in self.bases:
            known = ", ".join(sorted(self.bases)) or "none"
            raise ModelNotFound(
                f"The model `{request.model}` does not exist or cannot be fine-tuned on this "
                f"server (fine-tunable base models: {known})",
                param="model",
            )
        method = request.method or Method(type="supervised")
        if method.type not in ("supervised", "dpo"):
            raise BadRequest(f"method.type {method.type!r} is not supported; use 'supervised' "
                             "or 'dpo'", param="method.type")
        for other in ("supervised", "dpo", "reinforcement"):
            if other != method.type and getattr(method, other) is not None:
                raise BadRequest(f"method.{other} is given but method.type is {method.type!r}",
                                 param=f"method.{other}")
        hp_param = f"method.{method.type}.hyperparameters"
        if request.integrations:
            raise BadRequest("integrations are not supported by this server",
                             param="integrations")
        if request.suffix is not None and not _SUFFIX_RE.match(request.suffix):
            raise BadRequest(
                f"suffix {request.suffix!r} is not valid: use 1-40 letters, digits, '.', '_' or "
                "'-', starting with a letter or digit",
                param="suffix",
            )
        _check_promotion_metadata(request.metadata or {})
        training = self._dataset(request.training_file, "training_file", project)
        owner = training["project"]  # the job, its adapter and results belong to it
        validation = (self._dataset(request.validation_file, "validation_file", owner)
                      if request.validation_file else None)
        validation_path = Path(validation["path"]) if validation else None
        n_rows = int(training["rows"])
        held_out = 0 if validation_path is not None else held_out_rows(n_rows)

        hp: dict[str, Any] = {}
        if request.hyperparameters is not None:
            hp.update(request.hyperparameters.model_dump(exclude_none=True))
        chosen = getattr(method, method.type)
        if chosen is not None and chosen.hyperparameters is not None:
            hp.update(chosen.hyperparameters.model_dump(exclude_none=True))
        hp = resolve_hyperparameters(hp, n_rows - held_out, method=method.type)
        rank = hp.get("lora_rank")
        if self.max_lora_rank is not None and rank is not None and int(rank) > self.max_lora_rank:
            raise BadRequest(
                f"lora_rank {rank} is above this server's max_lora_rank ({self.max_lora_rank}); "
                "the adapter could not be served",
                param=f"{hp_param}.lora_rank",
            )
        self._check_processes(hp.get(PROCESSES_KEY), hp_param)
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        job_id = new_id("ftjob")
        try:  # the served id must pass the registry's name rule, checked now, not after training
            check_name(fine_tuned_model_name(request.model, request.suffix, job_id), "")
        except AdapterRejected:
            raise BadRequest(
                f"suffix {request.suffix!r} is too long for base model {request.model!r}: the "
                "fine-tuned model id ft:<base>:<suffix>:<job-id> must fit in 64 characters",
                param="suffix",
            ) from None
        try:
            config = build_train_config(
                job_id=job_id,
                base_model_path=str(self.bases[request.model]),
                training_path=Path(training["path"]),
                validation_path=validation_path,
                held_out_rows=held_out,
                seed=seed,
                hyperparameters=hp,
                output_dir=self.store.runs_dir / job_id / "output",
                method=method.type,
            )
        except UserError as exc:
            raise BadRequest(str(exc), param=hp_param) from None
        data_summary = _check_data(config, self.bases[request.model])

        method_out = {"type": method.type, method.type: {"hyperparameters": hp}}
        openai_hp = {k: hp[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
        self.store.add_job({
            "id": job_id, "created_at": now(), "model": request.model,
            "training_file": request.training_file, "validation_file": request.validation_file,
            "suffix": request.suffix, "seed": seed, "status": "validating_files",
            "hyperparameters": openai_hp, "method": method_out, "metadata": request.metadata,
            "train_config": config, "project": owner,
        })
        self.store.add_event(job_id, f"Validating training file: {request.training_file}"
                             + (f" and validation file: {request.validation_file}"
                                if validation else ""))
        error = _file_error("training_file", training) or (
            _file_error("validation_file", validation) if validation else None)
        if error is not None:
            self.store.update_job(job_id, only_if_status={"validating_files"}, status="failed",
                                  finished_at=now(), error=error)
            self.store.add_event(job_id, f"Fine-tuning job failed: {error['message']}",
                                 level="error")
            return self.retrieve(job_id)
        self.store.add_event(job_id, held_out_event(n_rows, held_out, request.validation_file),
                             level="info" if held_out or validation_path else "warn")
        self.store.add_event(job_id, data_summary)
        self.store.update_job(job_id, only_if_status={"validating_files"}, status="queued")
        self.store.add_event(job_id, "Files validated, moving job to queued state.")
        self.supervisor.wake()
        return self.retrieve(job_id)

    def _check_processes(self, n: Any, hp_param: str) -> None:
        """``num_processes``: a whole number from 1 to this worker's ``max_processes``."""
        if n is None:
            return
        param = f"{hp_param}.{PROCESSES_KEY}"
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise BadRequest(f"{PROCESSES_KEY} must be a whole number of at least 1, got {n!r}",
                             param=param)
        if n > self.max_processes:
            raise BadRequest(
                f"{PROCESSES_KEY} {n} is above this worker's max_processes "
                f"({self.max_processes}; TUNESERVE_JOBS_MAX_PROCESSES, at most its GPU count)",
                param=param,
            )

    def _dataset(self, file_id: str, param: str, project: str | None) -> dict[str, Any]:
        """The stored fine-tune file's record (``path``, ``rows``); 400 naming ``param``
        (another project's file is answered as if absent)."""
        record = self.store.get_file(file_id)
        if record is None or not in_scope(record["project"], project):
            raise BadRequest(f"invalid {param}: no such file {file_id!r}", param=param,
                             code="invalid_file")
        if record["purpose"] != "fine-tune":
            raise BadRequest(f"invalid {param}: file {file_id!r} has purpose "
                             f"{record['purpose']!r}, not 'fine-tune'", param=param)
        return record

    # ---- read -------------------------------------------------------------------------
    def retrieve(self, job_id: str, project: str | None = None) -> FineTuningJob:
        return to_job(self._get(job_id, project))

    def list(self, *, after: str | None = None, limit: int = 20,
             project: str | None = None) -> JobList:
        cursor = self.store.get_job(after) if after is not None else None
        if cursor is not None and not in_scope(cursor["project"], project):
            return JobList(data=[], has_more=False)  # as for an unknown cursor id
        jobs, has_more = self.store.list_jobs(after=after, limit=limit, project=project)
        return JobList(data=[to_job(j) for j in jobs], has_more=has_more)

    def events(self, job_id: str, *, after: str | None = None, limit: int = 20,
               project: str | None = None) -> EventList:
        self._get(job_id, project)
        events, has_more = self.store.list_events(job_id, after=after, limit=limit)
        return EventList(data=[to_event(e) for e in events], has_more=has_more)

    def checkpoints(self, job_id: str, *, after: str | None = None, limit: int = 10,
                    project: str | None = None) -> CheckpointList:
        job = self._get(job_id, project)
        rows, has_more = self.store.list_checkpoints(job_id, after=after, limit=limit)
        model = fine_tuned_model_name(job["model"], job["suffix"], job_id)
        data = [
            FineTuningJobCheckpoint(
                id=r["id"], created_at=r["created_at"], fine_tuning_job_id=job_id,
                fine_tuned_model_checkpoint=f"{model}:ckpt-step-{r['step_number']}",
                metrics=r["metrics"], step_number=r["step_number"],
            )
            for r in rows
        ]
        return CheckpointList(data=data, has_more=has_more,
                              first_id=data[0].id if data else None,
                              last_id=data[-1].id if data else None)

    # ---- cancel -----------------------------------------------------------------------
    async def cancel(self, job_id: str, project: str | None = None) -> FineTuningJob:
        job = await asyncio.to_thread(self._get, job_id, project)
        if job["status"] in TERMINAL_STATUSES:
            raise BadRequest(f"job {job_id} has already finished ({job['status']}) and cannot be "
                             "cancelled", param="fine_tuning_job_id", code="job_not_cancellable")
        return to_job(await self.supervisor.cancel(job_id))

    def _get(self, job_id: str, project: str | None = None) -> dict[str, Any]:
        """The job; 404 when absent or another project's (the same answer)."""
        job = self.store.get_job(job_id)
        if job is None or not in_scope(job["project"], project):
            raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
        return job


def _file_error(param: str, record: dict[str, Any]) -> dict[str, Any] | None:
    """The job's error when a stored file no longer reads as the trainer needs it, else None.

    Files were checked at upload; they are read again with the same loader here (the
    files may have been changed or lost on disk since) so a bad file fails the job now, at
    validation, not minutes into training.
    """
    path = Path(record["path"])
    try:
        if not path.is_file():  # said without the server's storage path
            raise ServiceError(f"{record['filename']}: the stored file is missing")
        validate_dataset(path, record["filename"])
    except ServiceError as exc:
        return {"code": "invalid_file", "param": param,
                "message": f"invalid {param} {record['id']}: {exc}"}
    return None


def _check_promotion_metadata(metadata: dict[str, str]) -> None:
    """``metadata.alias`` / ``metadata.auto_promote`` change what happens after training:
    checked now, not after the job has run."""
    from service.jobs.verdict import ALIAS_KEY, AUTO_PROMOTE_KEY

    alias = metadata.get(ALIAS_KEY)
    if alias is not None:
        try:
            check_name(alias, "")
        except AdapterRejected as exc:
            raise BadRequest(f"metadata.{ALIAS_KEY}: {exc.message}",
                             param=f"metadata.{ALIAS_KEY}") from None
    auto = metadata.get(AUTO_PROMOTE_KEY)
    if auto is not None and auto.lower() not in ("true", "false"):
        raise BadRequest(f"metadata.{AUTO_PROMOTE_KEY} must be 'true' or 'false', got {auto!r}",
                         param=f"metadata.{AUTO_PROMOTE_KEY}")
    if auto is not None and alias is None:
        raise BadRequest(f"metadata.{AUTO_PROMOTE_KEY} needs metadata.{ALIAS_KEY}: the alias "
                         "to promote the adapter to", param=f"metadata.{AUTO_PROMOTE_KEY}")


def held_out_event(n_rows: int, held_out: int, validation_file: str | None) -> str:
    """The job event that says which rows will judge the adapter."""
    if validation_file:
        return f"Held-out rows: the validation file {validation_file} (not trained on)."
    if held_out:
        return (f"Held-out rows: {held_out} of the training file's {n_rows} rows are kept out "
                "of training (seeded split, recorded in the adapter's manifest).")
    return (f"Held-out rows: none. The training file has {n_rows} rows, fewer than "
            f"{MIN_ROWS_TO_HOLD_OUT}, so every row is trained on; pass a validation_file to "
            "judge the adapter on rows it never saw.")


def to_job(record: dict[str, Any]) -> FineTuningJob:
    """The OpenAI view of a stored job (``fine_tuned_model``/``trained_tokens`` once done)."""
    done = record["status"] == "succeeded"
    return FineTuningJob(
        id=record["id"], created_at=record["created_at"], error=record["error"],
        fine_tuned_model=record["fine_tuned_model"], finished_at=record["finished_at"],
        hyperparameters=record["hyperparameters"], model=record["model"], seed=record["seed"],
        status=record["status"], trained_tokens=record["trained_tokens"] if done else None,
        training_file=record["training_file"], validation_file=record["validation_file"],
        metadata=record["metadata"], method=record["method"],
        result_files=record.get("result_files") or [], evaluation=_public(record.get("evaluation")),
    )


def _public(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    """The job's evaluation without the replica's claim on it (JobStore.claim_evaluation)."""
    if evaluation is None:
        return None
    return {key: value for key, value in evaluation.items() if key != "claim"}


def to_event(record: dict[str, Any]) -> FineTuningJobEvent:
    return FineTuningJobEvent(id=record["id"], created_at=record["created_at"],
                              level=record["level"], message=record["message"],
                              data=record["data"], type=record["type"])


def _check_data(config: dict[str, Any], base_path: Path) -> str:
    """Lengths against sequence_len, duplicates and the work estimate, before the job is
    queued (training.data.data_check); 400 naming training_file with the line report."""
    from training.config import TrainConfig
    from training.data import data_check

    if not (Path(base_path) / "tokenizer_config.json").is_file():
        return "Data check skipped: the base model folder has no tokenizer"
    try:
        return data_check(TrainConfig.model_validate(config), base_path)
    except UserError as exc:
        raise BadRequest(str(exc), param="training_file", code="invalid_file") from None
