"""bench/load_test.py against a real server (tiny model, real vLLM), smaller settings than
the recorded run: 64 concurrent streaming clients over the base and two adapters, then a
burst of 3x the server's in-flight limit. Nothing lost or duplicated, the server's
counters agree with the clients, overload is 429 + Retry-After (no timeouts), memory
steady and no request left running afterwards."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from tests.integration.reliability_support import chat_ok
from tests.unit.service_lora import make_lora_adapter

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.load_test import run_load  # noqa: E402

logger = logging.getLogger(__name__)
MAX_IN_FLIGHT = 64  # the server default the tiny_live_server fixture runs with


def test_load_then_burst_loses_nothing(tiny_live_server, tiny_model_dir, tmp_path):
    server = tiny_live_server
    names = []
    for i in range(2):
        adapter = make_lora_adapter(Path(tiny_model_dir), tmp_path / f"load-{i}", seed=i)
        server.register_adapter(adapter, f"rel-load-{i}")
        names.append(f"rel-load-{i}")
    try:
        report = run_load(server.base_url, server.user_key, [server.model_id, *names],
                          clients=64, duration_s=60, burst=3 * MAX_IN_FLIGHT, max_tokens=4,
                          server_pids=[server.process.pid], settle_s=3,
                          metrics_key=server.admin_key)
    finally:
        for name in names:
            server.unregister_adapter(name)
    detail = report.summary() + "\n" + "\n".join(report.error_samples)
    logger.info("load test (tiny model): %s", report.summary())  # figures for the docs
    assert report.sent > 64, detail
    assert report.lost == 0 and report.timeouts == 0 and report.errors == 0, detail
    assert report.duplicated == 0, detail
    assert report.server_errors_5xx == 0, detail
    assert report.rejected_without_retry_after == 0, detail
    assert report.server_counter_mismatch == {}, detail
    # The burst went past capacity: some were turned away at once, the rest completed.
    assert report.burst_rejected > 0 and report.burst_ok > 0, detail
    assert report.burst_ok + report.burst_rejected == 3 * MAX_IN_FLIGHT, detail
    assert report.idle_after, detail
    # Memory steady: settling after the burst does not keep growing past the load's peak.
    growth = report.rss_mb["settled"] - report.rss_mb["after_steady"]
    assert growth < max(200.0, 0.1 * report.rss_mb["after_steady"]), report.rss_mb
    chat_ok(server)
