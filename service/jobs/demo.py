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
    """The defaults any job gets (`auto` epochs, batch size and learning rate from the row
    count), so the demo shows what a user's own job does. Measured on the 128-row slice
    (`bench/demo_job.py`): the earlier fixed 30 steps of 8 rows at 5x the learning rate
    learned the commands' start but never where to stop (0% of answers ended by themselves);
    `auto` (batch 1, 3 epochs) ends them. ``demo_max_steps`` caps the steps when set."""
    hyperparameters: dict = {"sequence_len": 128, "save_steps": 50, "logging_steps": 5}
    if settings.demo_max_steps is not None:
        hyperparameters["max_steps"] = settings.demo_max_steps
    return hyperparameters


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
