"""Settings of the fine-tuning runtime (env prefix ``TUNESERVE_JOBS_``)."""

from __future__ import annotations

import sys

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_train_command() -> list[str]:
    # The same interpreter as the server, so the worker sees the same venv and packages.
    return [sys.executable, "-m", "tuneserve.cli", "train"]


def _default_multi_process_command() -> list[str]:
    # accelerate's torchrun launcher: one process per GPU (gloo DDP on a CPU-only machine).
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", "{n}", "--main_process_port", "{port}",
        "-m", "tuneserve.cli", "train",
    ]


class JobsSettings(BaseSettings):
    """How jobs are queued, run, stopped and resumed; every field has a default."""

    model_config = SettingsConfigDict(env_prefix="TUNESERVE_JOBS_", extra="ignore")

    enabled: bool = Field(True, description="Run the job supervisor inside `tuneserve serve`.")
    max_concurrent: int = Field(1, ge=1, description="Training processes allowed at once.")
    max_upload_mb: float = Field(100.0, gt=0, description="Largest accepted /v1/files upload.")
    poll_interval_s: float = Field(
        0.5, gt=0, description="How often the supervisor reads logs and checks the queue."
    )
    cancel_grace_s: float = Field(
        10.0, gt=0, description="Seconds between SIGTERM and SIGKILL when a job is cancelled."
    )
    lease_s: int = Field(
        60, ge=2, description="Seconds a supervisor's claim on a running job lasts without "
        "renewal (it renews every poll). Another replica's supervisor takes over a job whose "
        "lease ran out (its claimer died) and resumes it from its newest checkpoint.",
    )
    replica_id: str | None = Field(
        None, description="Who this supervisor is across restarts (default: the host name "
        "and TUNESERVE_HOME): at start it settles at once the running jobs a previous process "
        "of the same replica left, and leaves other replicas' jobs to their leases.",
    )
    max_resume_attempts: int = Field(
        1, ge=0, description="Times an interrupted job is resumed from its last checkpoint."
    )
    train_command: list[str] = Field(
        default_factory=_default_train_command,
        description="Command that trains one config (contract: `tuneserve train CONFIG "
        "--log-file LOG`); a JSON list in the environment.",
    )
    max_processes: int = Field(
        1, ge=1, description="Most training processes one job may ask for with the "
        "`num_processes` hyperparameter (DDP, one per GPU): set it to the worker's GPU count.",
    )
    multi_process_command: list[str] = Field(
        default_factory=_default_multi_process_command,
        description="Command for a job with num_processes N > 1 (`{n}`: N, `{port}`: a free "
        "rendezvous port); the config and `--log-file LOG` follow, as for train_command.",
    )
    evaluate_on_success: bool = Field(
        True, description="Evaluate every succeeded job's adapter against the base on its "
        "held-out rows, give the verdict and apply the promotion gate (service/jobs/verdict.py). "
        "Read where the job trains (a server or `tuneserve worker`): it marks the evaluation "
        "pending, and a serving replica claims and runs it.",
    )
    demo_job_if_no_adapters: bool = Field(
        False,
        description="At start, when no adapter is registered and no job exists, queue a "
        "CPU-sized demo job on the docker-commands data (the first run of `make run`).",
    )
    demo_data: str | None = Field(
        None, description="Dataset for the demo job (default: the docker-commands data)."
    )
    demo_rows: int = Field(128, ge=8, description="Rows of the demo dataset to train on.")
    demo_max_steps: int | None = Field(
        None, ge=1, description="Cap on the demo job's optimiser steps (default: none, the "
        "`auto` rule decides as for any job)."
    )

    @model_validator(mode="after")
    def _lease_outlives_polls(self) -> JobsSettings:
        # The lease is renewed once per poll: a lease shorter than two polls would be lost
        # by a healthy supervisor.
        if self.lease_s < 2 * self.poll_interval_s:
            raise ValueError(f"lease_s ({self.lease_s}) must be at least twice poll_interval_s "
                             f"({self.poll_interval_s})")
        return self
