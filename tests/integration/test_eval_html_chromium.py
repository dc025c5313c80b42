"""The HTML report renders in headless Chromium: the summary table and plots are there."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from evaluation.report import write_reports
from evaluation.runner import summarise
from evaluation.suite import load_suite

pytestmark = pytest.mark.slow


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("headless Chromium missing: run scripts/install-system-deps.sh")


def _record() -> dict:
    suite = load_suite("docker-commands")
    refs = [f"docker logs -f web{i}" for i in range(60)]
    examples = [
        {
            "index": i,
            "messages": [{"role": "user", "content": f"follow the logs of web{i}"}],
            "reference": ref,
            "outputs": {
                "base": {"text": f"docker log web{i}", "latency_s": 0.3, "output_tokens": 5,
                         "tokens_per_s": 16.0, "nll": 2.5},
                "docker-lora": {"text": ref if i % 4 else "docker ps", "latency_s": 0.3,
                                "output_tokens": 6, "tokens_per_s": 20.0, "nll": 0.4},
            },
        }
        for i, ref in enumerate(refs)
    ]
    return summarise({
        "suite": suite.name, "suite_config": suite.model_dump(mode="json"),
        "server": "http://127.0.0.1:8000/v1", "started_at": "2026-01-01T00:00:00+00:00",
        "dataset": {"path": "dockerNLcommands.json", "sha256": "0", "held_out_rows": 60,
                    "val_set_size": 60, "seed": 42, "split_source": "suite"},
        "models": [{"label": "base"}, {"label": "docker-lora"}],
        "examples": examples, "judge": None, "notes": [],
    })


def test_html_report_renders_in_headless_chromium(tmp_path, test_output):
    paths = write_reports(_record(), tmp_path / "report")
    chromium = _chromium()
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = paths["html"].as_uri()
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert '<table id="summary">' in html
    assert "HELPS: docker-lora beats base on Exact match" in html
    assert "<td>Exact match</td>" in html and "Δ docker-lora" in html
    assert html.count('src="data:image/png;base64,') == 2

    shot = test_output / "eval-report.png"
    shot.unlink(missing_ok=True)
    run = subprocess.run(
        [chromium, *flags, "--window-size=1280,1600", f"--screenshot={shot}", url],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000  # a page with plots, not a blank one
