"""The Evaluate tab: run a suite on the server, watch it, read the report, see history.

Everything goes through the HTTP API with the session's key: ``POST /v1/evaluations``
starts the run in a worker on the server (owned by the key's project; its report and
history entry land where scheduled runs' do), the tab polls ``GET /v1/evaluations/{id}``,
then reads the report from ``/reports``; the history plot is built from the stored
reports' records. Only the suite names and metric names (static files of this package)
are read locally.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from ui.client import ServerError, TuneserveClient
from ui.common import connect, refusal

HISTORY_COLUMNS = ["run", "started", "model", "metric", "value"]
POLL_S = 1.0
HISTORY_RUNS = 20  # the newest reports a history plot reads
TERMINAL = {"succeeded", "failed", "cancelled"}


def suite_names() -> list[str]:
    """The built-in suites (evaluation/suites/*.yaml)."""
    from evaluation.suite import builtin_suites

    return list(builtin_suites())


async def _history(client: TuneserveClient, suite: str, metric: str | None) -> pd.DataFrame:
    """One row per (report, model) with ``metric`` for the suite's stored reports, oldest
    first, from ``GET /reports`` and each report's record."""
    reports = [r for r in await client.list_reports() if r.get("suite") == suite]
    rows = []
    for info in reversed(reports[:HISTORY_RUNS]):
        try:
            record = await client.report_record(str(info["id"]))
        except ServerError:
            continue  # a report without a readable record is left out of the plot
        for label, metrics in (record.get("metrics") or {}).items():
            value = metrics.get(metric) if isinstance(metrics, dict) and metric else None
            if isinstance(value, int | float):
                rows.append([info["id"], info.get("started_at") or "", label, metric,
                             float(value)])
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


async def history_frame(
    server: str | None, api_key: str | None, suite: str | None, metric: str | None
) -> Any:
    """The history plot of ``suite`` for ``metric`` (the server's reports)."""
    if not suite:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    try:
        return await _history(connect(server, api_key), suite, metric)
    except ServerError as exc:
        refusal(exc)
        return gr.skip()


async def run_evaluation(
    server: str | None,
    api_key: str | None,
    suite: str | None,
    models: list[str] | None,
    limit: float | None,
):
    """Run ``suite`` for ``models`` (the first is the baseline) on the server; yields
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
    start = time.monotonic()
    try:
        client = connect(server, api_key)
        run = await client.start_evaluation(suite, models, int(limit) if limit else None)
        while run.get("status") not in TERMINAL:
            elapsed = time.monotonic() - start
            state = "Queued" if run.get("status") == "queued" else "Running"
            yield (f"⏳ {state} **{suite}** on {', '.join(models)}… {elapsed:.0f} s "
                   f"(run `{run['id']}`)"), skip, skip, skip
            await asyncio.sleep(POLL_S)  # the API has no push; one cheap GET a second
            run = await client.get_evaluation(run["id"])
        if run["status"] != "succeeded":
            message = f"The evaluation {run['status']}: {run.get('error') or 'no details'}"
            gr.Warning(message)
            yield f"⚠️ {message}", skip, skip, skip
            return
        report_id = str(run["report_id"])
        report_md = await client.report_text(report_id)
        html = await client.report_text(report_id, "report.html")
        record = await client.report_record(report_id)
        history = await _history(client, suite, _primary_metric(record))
    except ServerError as exc:
        yield refusal(exc), skip, skip, skip
        return
    # The download button needs a local file: the page the server sent, in a temp folder.
    folder = Path(tempfile.mkdtemp(prefix="tuneserve-report-"))
    html_path = folder / f"{report_id}.html"
    html_path.write_text(html)
    status = (
        f"✅ Finished in {time.monotonic() - start:.0f} s. "
        f"[Open the HTML report](/reports/{report_id}/report.html) (served by the service) "
        "or download it below."
    )
    if run.get("regressed"):
        status += "\n\n❗ **Regression** against the previous run of this suite: see the report."
    yield status, report_md, str(html_path), history


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
    show.click(history_frame, [server, key, suite, metric], plot)
    return models
