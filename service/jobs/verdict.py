"""From a succeeded job to a verdict: evaluate, report, gate, promote.

When a job succeeds its evaluation is marked ``pending`` (``mark_evaluation_pending``: by
the supervisor of a serving replica or of a ``tuneserve worker`` pod). Every serving
replica's ``JobEvaluator`` claims pending evaluations from the shared jobs table
(``JobStore.claim_evaluation``: a lease it renews while it runs, so each evaluation runs on
one replica, and one whose replica died is taken up by another once the lease ran out). It
runs them one at a time, as ``tuneserve eval run`` subprocesses against its own server (the
same worker pattern as the scheduled evaluations: never on the serving event loop, never in
the engine's process), on the job's held-out rows:

- models: the base, the candidate and, when the job names an alias that already points at
  an adapter, that current target (rows the current target trained on are then dropped);
- a suite written for the job: metrics that fit the answers (``evaluation.gate.
  plan_for_references``), greedy decoding, room for twice the longest answer;
- the report goes to the reports folder (served at ``/reports``), the history keeps it
  under the suite ``job-<id>``.

Then ``evaluation.gate.decide`` gives the verdict, which becomes job events, a
``fine-tune-results`` file in the job's ``result_files`` and the job's ``evaluation``
field. With ``metadata.alias`` set, a passing candidate is promoted to that alias (unless
``metadata.auto_promote`` is ``"false"``); a failing one is recorded as refused. Only an
alias the job's project owns (or a new one, which it then owns; the adapter stays private)
may be moved by a job, unless jobs are an admin decision (``service.tenancy.
job_alias_scope``); another project's or a shared alias is refused with that reason. The job's
``evaluation.status`` (pending → running → done | skipped | failed) lives in the jobs
table: a restarted replica takes its predecessor's running evaluation back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from evaluation.gate import EvalPlan, decide, plan_for_references
from service.files.serving import FilesService
from service.jobs.store import JobStore
from service.reports.eval_subprocess import eval_env, run_subprocess
from service.tenancy import DEFAULT_PROJECT, alias_refusal
from training.manifest import read_held_out
from tuneserve.home import lease_owner

log = logging.getLogger(__name__)

ALIAS_KEY, AUTO_PROMOTE_KEY = "alias", "auto_promote"
CANDIDATE, CURRENT = "candidate", "current"


class JobEvaluator:
    """Runs the post-training evaluations this replica claims, one at a time, in
    subprocesses."""

    def __init__(self, store: JobStore, files: FilesService,
                 registry: Callable[[], Awaitable[Any]], *, server_url: str,
                 api_key: Callable[[str], str | None],
                 reports_root: Callable[[], Path],
                 alias_scope: Callable[[str], str | None] = lambda project: project,
                 lease_s: int = 60, replica: str | None = None) -> None:
        self.store = store
        self.files = files
        # Awaited before the first claim: the adapter registry once the engine is up (a
        # replica whose engine is not up yet claims nothing).
        self.registry = registry
        self.server_url = server_url
        # project -> the key to evaluate with: one that can see the job's private adapter.
        self.api_key = api_key
        self.reports_root = reports_root  # the folder /reports serves, looked up when used
        # project -> whose aliases its jobs may promote to (None: any; service.tenancy).
        self.alias_scope = alias_scope
        # The claim on a running evaluation (JobStore.claim_evaluation), renewed a few
        # times per lease; the queue is scanned every half lease, so an evaluation left
        # pending by a worker pod, or running by a dead replica, is taken up by a live one.
        self.lease_s = lease_s
        self.owner = lease_owner(replica)
        self._wake = asyncio.Event()
        self._loop_of_task: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Start claiming evaluations, those a stopped service left unfinished first."""
        self._loop_of_task = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._loop(), name="job-evaluator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()  # kills a running evaluation's process group
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def submit(self, job_id: str) -> None:
        """Queue the evaluation of a job that just succeeded (callable from any thread)."""
        mark_evaluation_pending(self.store, job_id)
        if self._loop_of_task is not None:
            self._loop_of_task.call_soon_threadsafe(self._wake.set)

    async def _loop(self) -> None:
        try:
            registry = await self.registry()
        except Exception:  # no engine, no served adapter to evaluate: leave them to others
            log.exception("job evaluator: no adapter registry; this replica evaluates no job")
            return
        while True:
            try:
                for job_id in await asyncio.to_thread(self.store.evaluations_to_run):
                    if await asyncio.to_thread(self.store.claim_evaluation, job_id,
                                               self.owner, self.lease_s):
                        await self._run_claimed(job_id, registry)
            except Exception:  # e.g. the database unreachable: scan again on the next tick
                log.exception("job evaluator: could not read or claim the evaluations")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.lease_s / 2)
            self._wake.clear()

    async def _run_claimed(self, job_id: str, registry: Any) -> None:
        """Evaluate a claimed job while keeping the claim; stop if another replica took it."""
        lost = asyncio.Event()
        evaluation = asyncio.create_task(self.evaluate(job_id, registry))
        keeper = asyncio.create_task(self._keep_claim(job_id, evaluation, lost))
        try:
            await evaluation
        except asyncio.CancelledError:
            if not lost.is_set():
                raise  # the service is stopping
            log.warning("evaluation of job %s stopped: its claim ran out and another replica "
                        "took it", job_id)
        except Exception as exc:  # one job's evaluation must not stop the others
            log.exception("evaluation of job %s failed", job_id)
            self._fail(job_id, f"the evaluation could not run: {exc}")
        finally:
            keeper.cancel()

    async def _keep_claim(self, job_id: str, evaluation: asyncio.Task,
                          lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            if not await asyncio.to_thread(self.store.renew_evaluation, job_id, self.owner,
                                           self.lease_s):
                lost.set()
                evaluation.cancel()
                return

    # ---- one job ----------------------------------------------------------------------
    async def evaluate(self, job_id: str, registry: Any) -> None:
        job = self.store.get_job(job_id)
        if job is None or job["status"] != "succeeded":
            return
        adapter_dir = Path(job["adapter_path"])
        held_out = read_held_out(adapter_dir)
        if not held_out:
            self._set(job_id, status="skipped", reason="no held-out rows")
            self.store.add_event(job_id, "Evaluation skipped: the job kept no held-out rows (fewer "
                                 "than 10 training rows and no validation_file), so nothing the "
                                 "adapter never saw can judge it.", level="warn")
            return
        await _served_here(registry, job["fine_tuned_model"])
        plan = plan_for_references([row["messages"][-1]["content"] for row in held_out])
        metadata = job.get("metadata") or {}
        alias = metadata.get(ALIAS_KEY)
        current = registry.aliases.target(alias) if alias else None
        if current == job["fine_tuned_model"] or (alias and self._not_ours(registry, job, alias)):
            current = None  # another project's target is not this job's to compare with
        self._set(job_id, status="running", rows=len(held_out), metric=plan.primary)
        self.store.add_event(job_id, f"Evaluating {job['fine_tuned_model']} against the base"
                             + (f" and {current} (alias {alias})" if current else "")
                             + f" on {len(held_out)} held-out rows ({', '.join(plan.metrics)}).")
        record, report_dir = await self._run_eval(job, plan, current)
        decision = decide(record, candidate=CANDIDATE, metric=plan.primary, margin=plan.margin,
                          current=CURRENT if current else None)
        evidence = decision.to_dict()
        summary = self._summary(job, record, plan, evidence, report_dir, alias, current)
        result = self.files.add_result(json.dumps(summary, indent=2).encode(),
                                       f"{job_id}-evaluation.json",
                                       project=job.get("project", "default"))
        self.store.update_job(job_id, result_files=[result.id])
        figures = _figures_message(summary)
        self.store.add_event(job_id, figures, data=summary["figures"])
        verdict = "beats the base" if decision.beats_base else "does not beat the base"
        promoted = alias is not None and self._promote(registry, job, alias, decision, summary,
                                                       result.id)
        self._set(job_id, status="done", verdict=verdict, promoted=promoted,
                  alias=alias, report=summary["report"], result_file=result.id,
                  decision=evidence, figures=summary["figures"])
        message = f"Verdict: {job['fine_tuned_model']} {verdict} ({decision.summary()})."
        self.store.add_event(job_id, message, data={"verdict": verdict})
        log.info("job %s: %s %s", job_id, figures, message)

    async def _run_eval(self, job: dict[str, Any], plan: EvalPlan,
                        current: str | None) -> tuple[dict[str, Any], Path]:
        run_dir = self.store.runs_dir / job["id"]
        suite_path = run_dir / "evaluation-suite.yaml"
        suite_path.write_text(yaml.safe_dump(_suite(job, plan, self._dataset_path(job))))
        models = f"base,{CANDIDATE}={job['fine_tuned_model']}"
        if current:
            models += f",{CURRENT}={current}"
        output_root = self.reports_root()
        argv = [sys.executable, "-m", "tuneserve.cli", "eval", "run", str(suite_path),
                "--models", models, "--server", self.server_url, "--output-dir", str(output_root)]
        if current:  # the current target may have trained on some of these rows
            argv.append("--exclude-trained-rows")
        log_path = run_dir / "evaluation.log"
        code = await run_subprocess(argv, eval_env(self.api_key(job.get("project", "default"))),
                                    log_path)
        reports = sorted(output_root.glob(f"job-{job['id']}-*/report.json"))
        if code not in (0, 1) or not reports:  # 1 = a regression against history: still a run
            raise RuntimeError(_last_line(log_path) or f"tuneserve eval run exited with {code}")
        report = reports[-1]
        return json.loads(report.read_text()), report.parent

    def _dataset_path(self, job: dict[str, Any]) -> str:
        """The file whose held-out rows the adapter saved: the validation file if given."""
        file_id = job["validation_file"] or job["training_file"]
        record = self.store.get_file(file_id)
        if record is None:
            raise RuntimeError(f"the job's file {file_id} was deleted; nothing to evaluate on")
        return record["path"]

    def _promote(self, registry: Any, job: dict[str, Any], alias: str, decision: Any,
                 summary: dict[str, Any], result_file: str) -> bool:
        name, actor = job["fine_tuned_model"], f"job:{job['id']}"
        evidence = {"report": summary["report"], "result_file": result_file,
                    "gate": summary["decision"]}
        auto = str((job.get("metadata") or {}).get(AUTO_PROMOTE_KEY, "true")).lower() != "false"
        refusal = self._not_ours(registry, job, alias)
        if refusal:  # not this job's alias to move, whatever the gate says; adapter stays private
            registry.refuse(alias, name, actor=actor, reason=refusal, evidence=evidence)
            self.store.add_event(job["id"], f"Not promoted to alias {alias}: {refusal}.",
                                 level="warn")
            return False
        if not decision.promote:
            registry.refuse(alias, name, actor=actor, reason=decision.summary(),
                            evidence=evidence)
            self.store.add_event(job["id"], f"Not promoted to alias {alias}: "
                                 f"{decision.summary()}.", level="warn")
            return False
        if not auto:
            self.store.add_event(job["id"], f"The gate passed; automatic promotion is off for this "
                                 f"job (metadata.{AUTO_PROMOTE_KEY}=false). Promote with POST "
                                 f"/v1/aliases/{alias}/promote.")
            return False
        registry.promote(alias, name, actor=actor, reason=decision.summary(),
                         evidence=evidence,
                         project=self.alias_scope(job.get("project", DEFAULT_PROJECT)))
        self.store.add_event(job["id"], f"Promoted: alias {alias} now serves {name}.")
        return True

    def _not_ours(self, registry: Any, job: dict[str, Any], alias: str) -> str | None:
        """Why this job may not move ``alias`` (another project's, or shared), or None."""
        return alias_refusal(alias, registry.aliases.target(alias) is not None,
                             registry.aliases.owner(alias),
                             self.alias_scope(job.get("project", DEFAULT_PROJECT)))

    def _summary(self, job, record, plan, decision, report_dir, alias, current) -> dict[str, Any]:
        labels = {m["label"]: m["model_id"] for m in record["models"]}
        figures = {
            "rows": len(record["examples"]),
            "metric": plan.primary,
            "models": {label: {k: v for k, v in record["metrics"][label].items()
                               if k in (*plan.metrics, "judge_win_rate")}
                       for label in labels},
            "stop_share": {label: _stop_share(record, label) for label in labels},
            "vs_base": {label: {k: comp[k] for k in (*plan.metrics, "judge_win_rate")
                                if k in comp}
                        for label, comp in record["comparisons"].items()},
        }
        rel = report_dir.name  # a folder directly under the reports root (see _run_eval)
        return {
            "object": "fine_tuning.job.evaluation",
            "job": job["id"], "adapter": job["fine_tuned_model"], "alias": alias,
            "current_target": current, "models": labels, "plan": plan.__dict__,
            "figures": figures, "decision": decision, "notes": record.get("notes", []),
            "report": {"html": f"/reports/{rel}/report.html", "json": f"/reports/{rel}/report.json",
                       "path": str(report_dir)},
        }

    # ---- job.evaluation ---------------------------------------------------------------
    def _set(self, job_id: str, **fields: Any) -> None:
        self.store.update_evaluation(job_id, **fields)

    def _fail(self, job_id: str, message: str) -> None:
        self._set(job_id, status="failed", error=message)
        self.store.add_event(job_id, f"Evaluation failed: {message}", level="error")


async def _served_here(registry: Any, name: str) -> None:
    """Make sure this replica serves the adapter it is about to evaluate: one a worker pod
    (or another replica) published reaches here on the next registry sync, done now."""
    if registry.get(name) is None:
        await registry.sync()
    if registry.get(name) is None:
        reason = registry.unloadable.get(name, (None, "it is not in the adapter catalog"))[1]
        raise RuntimeError(f"this replica does not serve the adapter {name}: {reason}")


def mark_evaluation_pending(store: JobStore, job_id: str) -> None:
    """Queue a succeeded job's evaluation for whichever serving replica claims it first
    (the supervisor's ``after_success`` on a server, and on ``tuneserve worker``)."""
    store.update_evaluation(job_id, status="pending")


def _suite(job: dict[str, Any], plan: EvalPlan, dataset_path: str) -> dict[str, Any]:
    suite: dict[str, Any] = {
        "name": f"job-{job['id']}",
        "description": f"Held-out rows of fine-tuning job {job['id']} (written by the service).",
        "dataset": {"path": dataset_path},
        "generation": {"max_tokens": plan.max_tokens, "temperature": 0.0},
        "metrics": plan.metrics,
        "perplexity": False,
        "regression": {"margins": {plan.primary: plan.margin}},
    }
    if plan.judge:
        suite["judge"] = {"model": "base", "max_examples": 20}
    return suite


def _stop_share(record: dict[str, Any], label: str) -> float | None:
    """Share of answers that ended by themselves (``finish_reason`` stop), not at the limit."""
    reasons = [ex["outputs"][label].get("finish_reason") for ex in record["examples"]]
    known = [r for r in reasons if r is not None]
    return sum(r == "stop" for r in known) / len(known) if known else None


def _figures_message(summary: dict[str, Any]) -> str:
    fig, metric = summary["figures"], summary["figures"]["metric"]
    models = fig["models"]
    parts = [f"base {models['base'][metric]:.3f}"]
    for label in (CANDIDATE, CURRENT):
        if label in models:
            comp = fig["vs_base"][label][metric]
            parts.append(f"{label} {models[label][metric]:.3f} (vs base {comp['delta']:+.3f}, "
                         f"95% CI {comp['low']:+.3f} to {comp['high']:+.3f})")
    stop = fig["stop_share"].get(CANDIDATE)
    stops = f"; the adapter stopped by itself on {stop:.0%} of rows" if stop is not None else ""
    return (f"Evaluation on {fig['rows']} held-out rows, {metric}: {', '.join(parts)}{stops}. "
            f"Report: {summary['report']['html']}")


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else ""
    return ""
