"""The `make run` demo job as a new user gets it: a fresh server with the demo job on, timed
from start to a served adapter, then the service's own automatic evaluation of that
adapter on the demo's held-out rows (exact match against the base with its CI, and the
share of answers the adapter ends by itself, `finish_reason: stop`).

    flock /tmp/tuneserve-heavy.lock .venv/bin/python bench/demo_job.py --write docs/fine-tuning.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve_bench import bench_command, write_section  # noqa: E402

START, END = "<!-- demo-job:start -->", "<!-- demo-job:end -->"


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise SystemExit(f"timed out waiting for {what}")


def run(model: str) -> dict:
    import openai

    from tests.integration.jobs_server import JobsServer
    from training.base_models import resolve_model_path

    with tempfile.TemporaryDirectory(prefix="demo-job-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        started = time.monotonic()
        server = JobsServer(model=resolve_model_path(model), home=home,
                            env={"TUNESERVE_UI": "0", "TUNESERVE_JOBS_DEMO_JOB_IF_NO_ADAPTERS": "1"})
        server.start()
        try:
            ready_s = time.monotonic() - started
            sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
            job_id = wait_for(lambda: next((j.id for j in sdk.fine_tuning.jobs.list()), None),
                              120, "the demo job")
            job = wait_for(lambda: (j := sdk.fine_tuning.jobs.retrieve(job_id)).status in (
                "succeeded", "failed", "cancelled") and j, 3600, "the demo job to finish")
            if job.status != "succeeded":
                raise SystemExit(f"demo job {job.status}: {job.error}")
            served_s = time.monotonic() - started
            job = wait_for(lambda: (j := sdk.fine_tuning.jobs.retrieve(job_id)).evaluation
                           and j.evaluation.get("status") in ("done", "failed", "skipped") and j,
                           1800, "the automatic evaluation")
            judged_s = time.monotonic() - started
            summary = json.loads(sdk.files.content(job.result_files[0]).content)
        finally:
            server.stop()
    figures = summary["figures"]
    result = {
        "ready_s": ready_s, "served_s": served_s, "judged_s": judged_s,
        "steps": job.method.supervised.hyperparameters.model_extra.get("max_steps"),
        "rows": figures["rows"], "metric": figures["metric"],
        "base": figures["models"]["base"], "adapter": figures["models"]["candidate"],
        "vs_base": figures["vs_base"]["candidate"][figures["metric"]],
        "stop_share": figures["stop_share"]["candidate"],
        "base_stop_share": figures["stop_share"]["base"],
        "verdict": job.evaluation["verdict"],
    }
    print(json.dumps(result), flush=True)
    return result


def markdown(r: dict, command: str) -> str:
    ci = r["vs_base"]
    return "\n".join([
        START, "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this 2-core CPU, "
        "fresh `$TUNESERVE_HOME`:", "",
        f"    {command}", "",
        "| server ready | adapter served | verdict in | held-out rows | base EM | adapter EM "
        "| Δ EM 95% CI | adapter chrF | adapter stops by itself |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        f"| {r['ready_s']:.0f} s | {r['served_s']:.0f} s | {r['judged_s']:.0f} s | {r['rows']} "
        f"| {r['base']['exact_match']:.2f} | {r['adapter']['exact_match']:.2f} "
        f"| [{ci['low']:+.2f}, {ci['high']:+.2f}] | {r['adapter']['chrf']:.1f} "
        f"| {r['stop_share']:.0%} |",
        END,
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--write", type=Path, help="update this Markdown file's section")
    args = parser.parse_args(argv)
    result = run(args.model)
    command = bench_command("demo_job.py", argv)
    section = markdown(result, command)
    print(section)
    if args.write:
        write_section(args.write, section, START, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
