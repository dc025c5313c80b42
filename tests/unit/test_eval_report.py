"""Scoring a collected run record and writing JSON / Markdown / HTML reports."""

from __future__ import annotations

import base64
import json
import re

import pytest

from evaluation.report import headline, render_markdown, summary_table, write_reports
from evaluation.runner import summarise
from evaluation.suite import load_suite

REFS = [f"docker ps --filter name=web{i}" for i in range(40)]


def collected_record(adapter_right: int = 30, judge: bool = False) -> dict:
    """A record shaped like runner.collect's: base always wrong, the adapter right on the
    first ``adapter_right`` examples."""
    suite = load_suite("docker-commands")
    examples = []
    for i, ref in enumerate(REFS):
        examples.append(
            {
                "index": i,
                "messages": [{"role": "user", "content": f"show container web{i} <b>"}],
                "reference": ref,
                "outputs": {
                    "base": {
                        "text": "ls -la",
                        "latency_s": 0.2,
                        "output_tokens": 3,
                        "tokens_per_s": 15.0,
                        "nll": 3.0,
                    },
                    "docker": {
                        "text": ref if i < adapter_right else "docker images",
                        "latency_s": 0.25,
                        "output_tokens": 8,
                        "tokens_per_s": 32.0,
                        "nll": 0.5,
                    },
                },
            }
        )
    record = {
        "suite": suite.name,
        "suite_config": suite.model_dump(mode="json"),
        "server": "http://127.0.0.1:9/v1",
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00",
        "dataset": {
            "path": "/x/dockerNLcommands.json",
            "sha256": "0",
            "held_out_rows": 40,
            "val_set_size": 40,
            "seed": 42,
            "split_source": "suite",
        },
        "models": [
            {"label": "base", "model_id": "gemma"},
            {"label": "docker", "model_id": "docker"},
        ],
        "examples": examples,
        "judge": None,
        "notes": [],
    }
    if judge:
        record["judge"] = {
            "model": "gemma",
            "indices": list(range(4)),
            "candidates": {"docker": [{"score": s, "unparsed": 0} for s in (1.0, 1.0, 0.5, 1.0)]},
        }
    return summarise(record)


def test_summarise_metrics_and_cis():
    record = collected_record(judge=True)
    base, docker = record["metrics"]["base"], record["metrics"]["docker"]
    assert base["exact_match"] == 0.0 and docker["exact_match"] == pytest.approx(0.75)
    assert docker["nll"] == pytest.approx(0.5) and docker["perplexity"] == pytest.approx(
        1.6487, rel=1e-3
    )
    em = record["comparisons"]["docker"]["exact_match"]
    assert em["delta"] == pytest.approx(0.75) and em["excludes_zero"] and em["low"] > 0.5
    assert record["comparisons"]["docker"]["chrf"]["excludes_zero"]
    assert docker["judge_win_rate"] == pytest.approx(0.875)
    assert record["examples"][0]["scores"]["docker"]["exact_match"] == 1.0


def test_headline_and_table_say_it_helps():
    record = collected_record()
    assert headline(record)[0].startswith("HELPS: docker beats base on Exact match, chrF")
    header, rows = summary_table(record)
    assert header[:3] == ["Metric", "base", "docker"]
    em_row = rows[0]
    assert em_row[0] == "Exact match" and em_row[3] == "+0.750" and em_row[-1] == "better"
    nll_row = next(r for r in rows if r[0].startswith("Reference NLL"))
    assert nll_row[-1] == "better"  # lower NLL is better


def test_no_difference_when_models_agree():
    record = collected_record(adapter_right=0)
    for ex in record["examples"]:
        ex["outputs"]["docker"] = dict(ex["outputs"]["base"])
    record = summarise(record)
    assert headline(record)[0].startswith("NO CLEAR DIFFERENCE")


def test_write_reports(tmp_path):
    record = collected_record(judge=True)
    record["regression"] = {
        "previous_run_id": 7,
        "regressions": [{"description": "docker: chrf 90 -> 50 (allowed drop 2)"}],
    }
    paths = write_reports(record, tmp_path / "r")
    data = json.loads(paths["json"].read_text())
    assert data["metrics"]["docker"]["exact_match"] == pytest.approx(0.75)
    md = paths["markdown"].read_text()
    assert "| Exact match | 0.000 | 0.750 | +0.750 |" in md
    assert "REGRESSION against run #7" in md and "## Biggest wins: docker vs base" in md
    page = paths["html"].read_text()
    assert "<table id='summary'>" in page and "id='regression'" in page
    # Self-contained: plots are inline PNGs, nothing is fetched.
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 2
    assert all(base64.b64decode(img).startswith(b"\x89PNG") for img in images)
    assert "http://" not in page.replace(record["server"], "")
    # User text is escaped.
    assert "&lt;b&gt;" in page and "<b>" not in page.split("<body>")[1].replace("<b>REGRESSION", "")


def test_markdown_lists_biggest_regressions():
    record = collected_record(adapter_right=0)
    record["examples"][0]["outputs"]["base"]["text"] = REFS[0]
    record = summarise(record)
    md = render_markdown(record)
    section = md.split("## Biggest regressions")[1].split("## Random sample")[0]
    assert REFS[0] in section
