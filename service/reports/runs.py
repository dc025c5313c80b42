"""Evaluation runs started through the API (``POST /v1/evaluations``, e.g. by the UI).

A run is the same ``tuneserve eval run`` subprocess a scheduled evaluation is
(``service.reports.eval_subprocess``): it calls this server over HTTP, with the caller's
own key (in its environment, never argv), so it sees exactly the models the caller's
project sees; its report and history entry land where scheduled runs' do
(``/reports``). Runs execute one at a time (an evaluation saturates the engine); the
others wait as ``queued``. Each run is owned by the caller's project: another project's
key gets 404 for it, an admin key sees all. Runs are kept in memory (the reports stay).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.errors import BadRequest, NotFound, Overloaded
from service.ids import new_id
from service.reports.eval_subprocess import (
    app_reports_root,
    eval_env,
    local_server_url,
    run_subprocess,
)


def server_url_of(request: Any) -> str:
    """This server's ``/v1`` as the run reaches it: the socket the request came in on (not
    its ``Host`` header, which the caller chooses), else the configured address."""
    server = request.scope.get("server")
    if server and server[0]:
        return local_server_url(server[0], server[1])
    settings = request.app.state.settings
    return local_server_url(settings.host, settings.port)

MAX_MODELS = 4
# Queued + running runs per project: each run is a subprocess that saturates the engine, so
# one caller must not be able to queue an unbounded backlog of them.
MAX_ACTIVE_RUNS_PER_PROJECT = 2
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
# Exit codes of ``tuneserve eval run``: 1 is a finished run that found a regression.
_EXIT_OK, _EXIT_REGRESSION = 0, 1
_REPORT_LINE = re.compile(r"^report: (.+)$", re.MULTILINE)


class EvalRunRequest(BaseModel):
    """The body of ``POST /v1/evaluations``."""

    model_config = ConfigDict(extra="forbid")  # an unknown field is refused, not ignored

    suite: str = Field(description="a built-in suite name (GET /reports lists past runs)")
    models: list[str] = Field(
        min_length=2, max_length=MAX_MODELS,
        description="model ids as in /v1/models: the baseline first, then 1 to "
                    f"{MAX_MODELS - 1} models compared with it")
    limit: int | None = Field(None, ge=1, le=100_000,
                              description="evaluate only the first N held-out examples")


class EvalRun(BaseModel):
    """One evaluation run (``GET /v1/evaluations/{id}``)."""

    id: str
    object: Literal["evaluation.run"] = "evaluation.run"
    status: RunStatus = "queued"
    suite: str
    models: list[str]
    limit: int | None = None
    project: str
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    exit_code: int | None = None
    report_id: str | None = None  # the folder under /reports once it finished
    regressed: bool | None = None
    error: str | None = None


class EvalRunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvalRun]


def check_request(body: EvalRunRequest) -> None:
    """Refuse what the run would fail on, naming the parameter."""
    from evaluation.suite import builtin_suites

    suites = list(builtin_suites())
    # Built-in names only: a path would let a caller make the server read any YAML file.
    if body.suite not in suites:
        raise BadRequest(f"unknown suite {body.suite!r}; pick one of: {', '.join(suites)}",
                         param="suite", code="invalid_value")
    for index, model in enumerate(body.models):
        if not model.strip() or "," in model:
            raise BadRequest(f"models[{index}] must be a model id from /v1/models, got "
                             f"{model!r}", param="models", code="invalid_value")
    if len(set(body.models)) != len(body.models):
        raise BadRequest("models must not repeat a model id", param="models",
                         code="invalid_value")


class EvalRuns:
    """The API's evaluation runs of one app."""

    def __init__(self, state: Any) -> None:
        self._state = state
        self._runs: dict[str, EvalRun] = {}
        self._tasks: set[asyncio.Task] = set()
        self._one_at_a_time = asyncio.Semaphore(1)

    def start(
        self, body: EvalRunRequest, project: str, scope: str | None, api_key: str | None,
        server_url: str,
    ) -> EvalRun:
        """Queue a run that calls ``server_url`` (this server's ``/v1``) with ``api_key``;
        ``scope``: the project whose models the caller sees (None: all)."""
        check_request(body)
        for model in body.models:  # 404 naming the model before any process starts
            self._state.models_serving.get(model, scope)
        active = [r for r in self._runs.values()
                  if r.project == project and r.status in ("queued", "running")]
        if len(active) >= MAX_ACTIVE_RUNS_PER_PROJECT:
            raise Overloaded(
                f"project {project!r} already has {len(active)} evaluation runs queued or "
                f"running (at most {MAX_ACTIVE_RUNS_PER_PROJECT}); wait for one to finish")
        run = EvalRun(id=new_id("evalrun"), suite=body.suite, models=list(body.models),
                      limit=body.limit, project=project, created_at=int(time.time()))
        self._runs[run.id] = run
        task = asyncio.create_task(self._execute(run, api_key, server_url))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    def get(self, run_id: str, project: str, admin: bool) -> EvalRun:
        run = self._runs.get(run_id)
        # Another project's run is absent, not forbidden: its id says nothing.
        if run is None or not (admin or run.project == project):
            raise NotFound(f"no evaluation run {run_id!r}", param="run_id")
        return run

    def list(self, project: str, admin: bool) -> list[EvalRun]:
        runs = [r for r in self._runs.values() if admin or r.project == project]
        return sorted(runs, key=lambda r: r.created_at, reverse=True)

    async def stop(self) -> None:
        """Cancel the runs (kills a running evaluation's process group)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _execute(self, run: EvalRun, api_key: str | None, server_url: str) -> None:
        from tuneserve.home import tuneserve_home

        log_path = tuneserve_home() / "eval-runs" / f"{run.id}.log"
        argv = _command(run, server_url, app_reports_root(self._state))
        try:
            async with self._one_at_a_time:
                run.status, run.started_at = "running", int(time.time())
                code = await run_subprocess(argv, eval_env(api_key), log_path)
        except asyncio.CancelledError:
            run.status, run.finished_at = "cancelled", int(time.time())
            raise
        except OSError as exc:
            code, run.error = -1, f"could not start the evaluation: {exc}"
        run.exit_code, run.finished_at = code, int(time.time())
        output = log_path.read_text(errors="replace") if log_path.exists() else ""
        found = _REPORT_LINE.findall(output)
        if code in (_EXIT_OK, _EXIT_REGRESSION) and found:
            run.status, run.regressed = "succeeded", code == _EXIT_REGRESSION
            run.report_id = Path(found[-1].strip()).parent.name
        else:
            run.status = "failed"
            run.error = run.error or _last_error(output) or f"evaluation exited with {code}"


def _command(run: EvalRun, server_url: str, output_dir: Path) -> list[str]:
    import sys

    argv = [sys.executable, "-m", "tuneserve.cli", "eval", "run", run.suite,
            "--models", ",".join(run.models), "--server", server_url,
            "--output-dir", str(output_dir)]
    return argv + (["--limit", str(run.limit)] if run.limit else [])


def _last_error(output: str) -> str:
    """The child's last meaningful line (the CLI prints one readable line on bad input)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("===")]
    return lines[-1][:500] if lines else ""
