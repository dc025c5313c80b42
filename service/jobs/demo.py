"""The first-run demo job: when the server starts with no adapter and no job yet, queue a
CPU-sized fine-tuning job on a slice of the docker-commands data, so ``make run`` shows the
whole loop (upload -> job -> progress events -> adapter hot-loaded and served)."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from service.files.serving import FilesService
from service.fine_tuning.protocol import JobCreateRequest
from service.fine_tuning.serving import FineTuningService
from service.jobs.settings import JobsSettings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEMO_DATA = REPO_ROOT.parent / "shared" / "data" / "dockerNLcommands.json"
DEMO_SUFFIX = "docker-demo"


def demo_hyperparameters(settings: JobsSettings) -> dict:
    """A job that finishes in minutes on a 2-core CPU (short rows, high LoRA learning rate)."""
    return {
        "n_epochs": 1,
        "batch_size": 8,
        "learning_rate_multiplier": 5.0,  # 1e-3, as training/configs/docker-lora.yaml
        "max_steps": settings.demo_max_steps,
        "sequence_len": 128,
        "save_steps": 10,
        "logging_steps": 2,
    }


def queue_demo_job(files: FilesService, fine_tuning: FineTuningService, settings: JobsSettings,
                   *, adapters: int) -> str | None:
    """Queue the demo job unless adapters or jobs already exist; return its id (or None)."""
    jobs, _ = fine_tuning.store.list_jobs(limit=1)
    if adapters or jobs:
        return None
    if len(fine_tuning.bases) != 1:
        log.warning("demo job skipped: no single fine-tunable base model")
        return None
    source = Path(settings.demo_data) if settings.demo_data else DEFAULT_DEMO_DATA
    if not source.is_file():
        log.warning("demo job skipped: demo data %s not found (set TUNESERVE_JOBS_DEMO_DATA)",
                    source)
        return None
    from training.data import load_rows

    report = load_rows(source)
    rows = report.rows[: settings.demo_rows]
    with tempfile.TemporaryDirectory() as tmp:
        slice_path = Path(tmp) / "docker-demo.jsonl"
        slice_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        file = files.add_local(slice_path, "docker-demo.jsonl")
    base = next(iter(fine_tuning.bases))
    job = fine_tuning.create(JobCreateRequest(
        model=base, training_file=file.id, suffix=DEMO_SUFFIX, seed=42,
        method={"type": "supervised",
                "supervised": {"hyperparameters": demo_hyperparameters(settings)}},
    ))
    return job.id
