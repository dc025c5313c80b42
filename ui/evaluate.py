"""The Evaluate tab: run a suite against the server, watch it, read the report, see history.

The evaluation runner (``evaluation.pipeline``) is itself an OpenAI-API client, so the UI
runs it in a worker thread pointed at the connected server: every request still goes over
HTTP, and scoring happens in the UI process. Reports and the run history are written
under this process's ``$TUNESERVE_HOME`` (the service's own when the UI is mounted at
``/ui``, where they are also served under ``/reports/``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from tuneserve.errors import UserError
from ui.client import ServerError
from ui.common import connect, refusal

HISTORY_COLUMNS = ["run", "started", "model", "metric", "value"]


def suite_names() -> list[str]:
    """The built-in suites (evaluation/suites/*.yaml)."""
    from evaluation.suite import builtin_suites

    return list(builtin_suites())


def history_frame(suite: str | None, metric: str | None, limit: int = 50) -> pd.DataFrame:
    """One row per (run, model) with ``metric`` for the suite's stored runs, oldest first."""
    from evaluation.history import History

    rows = []
    if suite:
        for run in reversed(History().runs(suite, limit=limit)):
            for label, metrics in (run.metrics or {}).items():
                if not isinstance(metrics, dict):
                    continue
                value = metrics.get(metric) if metric else None
                if isinstance(value, int | float):
                    rows.append([run.id, run.started_at, label, metric, float(value)])
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def _server_v1(server: str) -> str:
    base = (server or "").strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        base = "http://" + base
    return base if base.endswith("/v1") else base + "/v1"


async def run_evaluation(
    server: str, api_key: str, suite: str | None, models: list[str] | None, limit: float | None
):
    """Run ``suite`` for ``models`` (the first is the baseline); yields
    (status, report markdown, report file, history plot)."""
    skip = gr.skip()
    models = [m for m in (models or []) if m]
    if not suite:
        yield "Pick a suite.", skip, skip, skip
        return
    if len(models) < 2:
        gr.Warning("Pick a baseline and at least one model to compare (the first is the baseline).")
        yield "Pick at least two models: the first is the baseline.", skip, skip, skip
        return
    from evaluation.pipeline import run_and_report
    from evaluation.runner import RunOptions
    from evaluation.suite import load_suite

    try:
        overrides = {"dataset": {"limit": int(limit)}} if limit else None
        loaded = load_suite(suite, overrides)
    except UserError as exc:
        yield refusal(exc), skip, skip, skip
        return
    opts = RunOptions(server=_server_v1(server), api_key=(api_key or "").strip() or "EMPTY")
    start = time.monotonic()
    task = asyncio.ensure_future(asyncio.to_thread(run_and_report, loaded, ",".join(models), opts))
    while not task.done():
        elapsed = time.monotonic() - start
        yield f"⏳ Running **{suite}** on {', '.join(models)}… {elapsed:.0f} s", skip, skip, skip
        await asyncio.wait({task}, timeout=1.0)
    try:
        result = task.result()
    except UserError as exc:
        yield refusal(exc), skip, skip, skip
        return
    except Exception as exc:  # noqa: BLE001 - a readable line, never a traceback
        gr.Warning(f"The evaluation failed: {exc}")
        yield f"⚠️ The evaluation failed: {exc}", skip, skip, skip
        return
    paths = result.paths
    report_md = Path(paths["markdown"]).read_text()
    folder = Path(paths["html"]).parent.name
    status = (
        f"✅ Finished in {time.monotonic() - start:.0f} s. "
        f"[Open the HTML report](/reports/{folder}/report.html) (served by the service) "
        "or download it below."
    )
    if result.regressed:
        status += "\n\n❗ **Regression** against the previous run of this suite: see the report."
    primary = _primary_metric(result.record)
    yield status, report_md, str(paths["html"]), history_frame(suite, primary)


def _primary_metric(record: dict[str, Any]) -> str:
    try:
        from evaluation.report import primary_metric

        return primary_metric(record)
    except Exception:  # noqa: BLE001 - the plot falls back to exact match
        return "exact_match"


REPORT_COLUMNS = ["id", "suite", "started", "models", "regressed", "headline"]


async def list_reports(server: str, api_key: str) -> tuple[Any, Any, str]:
    """(reports table, report picker, status) from the server's ``GET /reports``."""
    try:
        reports = await connect(server, api_key).list_reports()
    except ServerError as exc:
        return skip_(), skip_(), refusal(exc)
    rows = [
        [
            r.get("id"),
            r.get("suite") or "",
            r.get("started_at") or "",
            ", ".join(r.get("models") or []),
            "yes" if r.get("regressed") else "",
            " ".join(r.get("headline") or []),
        ]
        for r in reports
    ]
    ids = [row[0] for row in rows]
    picker = gr.update(choices=ids, value=ids[0] if ids else None)
    return (
        pd.DataFrame(rows, columns=REPORT_COLUMNS),
        picker,
        f"{len(rows)} report(s) on the server.",
    )


async def open_report(server: str, api_key: str, report_id: str | None) -> tuple[str, str]:
    """(report markdown, status) of one stored report, fetched over HTTP."""
    if not report_id:
        return skip_(), "Pick a report."
    try:
        text = await connect(server, api_key).report_text(report_id)
    except ServerError as exc:
        return skip_(), refusal(exc)
    return text, f"Report `{report_id}` ([HTML page](/reports/{report_id}/report.html))."


def skip_() -> Any:
    return gr.skip()


def metric_names() -> list[str]:
    from evaluation.suite import METRIC_DIRECTIONS

    return list(METRIC_DIRECTIONS)


def evaluate_tab(server: gr.State, key: gr.State) -> gr.Dropdown:
    """Lay out the Evaluate tab; returns the models picker (filled from /v1/models)."""
    suites = suite_names()
    gr.Markdown(
        "Run an evaluation suite: the **first** model is the baseline, the others are "
        "compared with it (deltas with 95% confidence intervals)."
    )
    with gr.Row():
        suite = gr.Dropdown(
            suites, value=suites[0] if suites else None, label="Suite", elem_id="eval-suite"
        )
        models = gr.Dropdown(
            [], multiselect=True, label="Models (baseline first)", elem_id="eval-models"
        )
        limit = gr.Number(
            value=50,
            precision=0,
            label="Examples (empty = whole held-out split)",
            elem_id="eval-limit",
        )
    run = gr.Button("Run evaluation", variant="primary", elem_id="eval-run")
    status = gr.Markdown(elem_id="eval-status")
    with gr.Accordion("Report", open=True):
        report = gr.Markdown(elem_id="eval-report")
        report_file = gr.File(label="HTML report", interactive=False)
    with gr.Accordion("Reports on the server", open=False):
        reports = gr.Dataframe(headers=REPORT_COLUMNS, interactive=False, wrap=True)
        with gr.Row():
            reports_refresh = gr.Button("List reports", elem_id="reports-refresh")
            picked = gr.Dropdown([], label="Report", elem_id="report-pick")
            open_btn = gr.Button("Open", elem_id="report-open")
    gr.Markdown("### History")
    with gr.Row():
        metric = gr.Dropdown(metric_names(), value="exact_match", label="Metric")
        show = gr.Button("Show history")
    plot = gr.LinePlot(
        pd.DataFrame(columns=HISTORY_COLUMNS),
        x="run",
        y="value",
        color="model",
        title="Metric per run",
        elem_id="eval-history",
    )
    run.click(
        run_evaluation, [server, key, suite, models, limit], [status, report, report_file, plot]
    )
    reports_refresh.click(list_reports, [server, key], [reports, picked, status])
    open_btn.click(open_report, [server, key, picked], [report, status])
    show.click(history_frame, [suite, metric], plot)
    suite.change(history_frame, [suite, metric], plot)
    return models
