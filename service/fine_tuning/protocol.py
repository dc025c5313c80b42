"""Request and response shapes of ``/v1/fine_tuning/jobs``, OpenAI's names field for field
(``openai.types.fine_tuning``: ``FineTuningJob``, ``FineTuningJobEvent``,
``FineTuningJobCheckpoint``, ``JobCreateParams``).

``method.type`` is ``supervised`` or ``dpo`` (TRL's DPOTrainer on preference rows, OpenAI's
DPO format; ``method.dpo.hyperparameters`` adds ``beta``).

Extension: LoRA settings ride in ``method.<type>.hyperparameters`` beside OpenAI's
keys – ``lora_rank``, ``lora_alpha``, ``lora_dropout``, ``qlora`` (bool), ``max_steps``,
``sequence_len``, ``save_steps``, ``logging_steps``, ``warmup_steps``. The SDK passes them
through unchanged (its params are TypedDicts) and echoes them back.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]


class Hyperparameters(BaseModel):
    """OpenAI's hyperparameters plus the LoRA extension keys (see the module docstring)."""

    model_config = ConfigDict(extra="allow")
    batch_size: Literal["auto"] | int | None = Field(None, description="Rows per batch.")
    learning_rate_multiplier: Literal["auto"] | float | None = Field(
        None, description="Multiplies the default learning rate (2e-4)."
    )
    n_epochs: Literal["auto"] | int | None = Field(None, description="Passes over the data.")


class SupervisedMethod(BaseModel):
    hyperparameters: Hyperparameters | None = None


class DpoHyperparameters(Hyperparameters):
    """OpenAI's DPO hyperparameters (``beta`` besides the three) plus the extension keys."""

    beta: Literal["auto"] | float | None = Field(
        None, description="DPO's beta (auto = 0.1): how far the model may move from the base."
    )


class DpoMethod(BaseModel):
    hyperparameters: DpoHyperparameters | None = None


class Method(BaseModel):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None


class JobCreateRequest(BaseModel):
    """Body of ``POST /v1/fine_tuning/jobs``; unknown keys are refused (a typo is an error)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    training_file: str
    hyperparameters: Hyperparameters | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    method: Method | None = None
    seed: int | None = None
    suffix: str | None = Field(None, max_length=64)
    validation_file: str | None = None


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: Hyperparameters
    model: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    organization_id: str = "org-tuneserve"
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: JobStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    method: Method | None = None
    # tuneserve's extension: the automatic evaluation of the adapter against the base on its
    # held-out rows (status, verdict, promotion, report links); see docs/fine-tuning.md.
    evaluation: dict[str, Any] | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(BaseModel):
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] | None = None


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class CheckpointMetrics(BaseModel):
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    step_number: int


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
