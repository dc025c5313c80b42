"""The post-training evaluator's claims (service/jobs/verdict.py) on both backends: two
replicas' evaluators share the pending evaluations, each run once; one whose claim was
taken over stops its run. The evaluation itself is replaced by a recorder here (the real
one, a `tuneserve eval run` against a server, is in tests/integration/test_replicas.py and
test_jobs_verdict.py); the store, the claims and the evaluator's loop are the real ones."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from service.jobs.store import JobStore, now
from service.jobs.verdict import JobEvaluator, mark_evaluation_pending


def _job(job_id: str) -> dict:
    return {"id": job_id, "created_at": now(), "model": "base", "training_file": "file-1",
            "seed": 1, "status": "succeeded", "hyperparameters": {"n_epochs": 1},
            "method": {"type": "supervised"}, "train_config": {"lr": 1e-4}}


class RecordingEvaluator(JobEvaluator):
    """A real evaluator whose evaluation only records who ran it (and may wait)."""

    def __init__(self, store: JobStore, replica: str, runs: list, hold: asyncio.Event | None,
                 lease_s: int = 3) -> None:
        async def registry() -> Any:
            return None

        super().__init__(store, None, registry, server_url="", api_key=lambda p: None,
                         reports_root=lambda: Path("."), lease_s=lease_s, replica=replica)
        self.runs, self.hold, self.cancelled = runs, hold, []

    async def evaluate(self, job_id: str, registry: Any) -> None:
        self.runs.append((self.owner, job_id))
        try:
            if self.hold is not None:
                await self.hold.wait()
        except asyncio.CancelledError:
            self.cancelled.append(job_id)
            raise
        self._set(job_id, status="done", verdict="beats the base")


async def _until(predicate, timeout: float = 20.0) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


def test_two_replicas_evaluate_each_pending_job_once(database_url, tmp_path):
    store = JobStore(tmp_path / "jobs", url=database_url)
    ids = [f"ftjob-{n}" for n in range(6)]
    for job_id in ids:
        store.add_job(_job(job_id))
    runs: list[tuple[str, str]] = []

    async def main():
        # Both replicas busy at once before any run finishes: each must have claimed another.
        both_busy = asyncio.Event()
        evaluators = [RecordingEvaluator(store, f"replica-{n}", runs, both_busy)
                      for n in (1, 2)]
        for evaluator in evaluators:
            evaluator.start()
        evaluators[0].submit(ids[0])  # a server's supervisor: marks it and wakes its evaluator
        for job_id in ids[1:]:  # a worker pod only marks them: the evaluators' scans find them
            mark_evaluation_pending(store, job_id)
        await _until(lambda: len(runs) >= 2)
        both_busy.set()
        await _until(lambda: all(store.get_job(j)["evaluation"]["status"] == "done"
                                 for j in ids))
        for evaluator in evaluators:
            await evaluator.stop()

    asyncio.run(main())
    assert sorted(job_id for _, job_id in runs) == ids  # each once, none lost
    assert all("claim" not in store.get_job(j)["evaluation"] for j in ids)


def test_an_evaluator_whose_claim_was_taken_over_stops_its_run(database_url, tmp_path):
    store = JobStore(tmp_path / "jobs", url=database_url)
    store.add_job(_job("ftjob-a"))
    mark_evaluation_pending(store, "ftjob-a")
    runs: list[tuple[str, str]] = []

    async def main():
        stuck = RecordingEvaluator(store, "replica-1", runs, asyncio.Event())
        stuck.start()
        await _until(lambda: runs)
        # Its lease ran out (a stall longer than the lease) and another replica claimed it.
        store.update_evaluation("ftjob-a", claim={"owner": stuck.owner, "until": 0})
        assert store.claim_evaluation("ftjob-a", "replica-2:1:x", lease_s=60)
        await _until(lambda: stuck.cancelled)  # on its next renewal
        await stuck.stop()
        return stuck

    stuck = asyncio.run(main())
    assert stuck.cancelled == ["ftjob-a"]
    evaluation = store.get_job("ftjob-a")["evaluation"]
    assert evaluation["status"] == "running"  # nothing written by the replica that lost it
    assert evaluation["claim"]["owner"] == "replica-2:1:x"
