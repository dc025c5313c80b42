"""Bounded load test of a tuneserve server: nothing lost, overload answered, memory steady.

Phases (loopback only; the run stops by itself):

1. warm-up: one request per model, then the server's RSS (process + children) is the
   baseline;
2. steady: ``--clients`` concurrent streaming chat clients for ``--duration`` seconds, each
   cycling through the base and the adapters (``--models``);
3. burst: ``--burst`` requests fired at once, past the server's ``max_in_flight``; each
   must end as a full stream (200 ... [DONE]) or an immediate 429/503 with Retry-After,
   never a timeout;
4. settle: wait until the in-flight gauges are 0, sample RSS again.

Every request carries a client-side id (the OpenAI ``user`` field) and is accounted for
exactly once; completion ids must be unique; the server's own request counters must move
by exactly what the clients saw. The report is JSON (``--json PATH``) and a summary line.

    # against a running server
    python bench/load_test.py --base-url http://127.0.0.1:8000 --key $USER_KEY \\
        --metrics-key $ADMIN_KEY \\
        --models gemma-3-270m,a1,a2,a3 --server-pid $(pgrep -f 'tuneserve.cli serve' | head -1)
    # start one on the real base with three adapters (what docs/reliability.md records)
    flock /tmp/tuneserve-heavy.lock python bench/load_test.py --start-server gemma-3-270m \\
        --adapters 3 --clients 64 --duration 60 --burst 256 --json /tmp/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # --start-server reuses the test suite's server launcher
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
REQUEST_TIMEOUT_S = 300.0  # a request slower than this counts as a timeout (a failure)


@dataclass
class Outcome:
    """What happened to one request."""

    client_id: str
    model: str
    phase: str
    status: int | None  # HTTP status, None on a transport error / timeout
    kind: str  # ok | rejected | error | timeout
    completion_id: str | None = None
    retry_after: str | None = None
    tokens: int = 0
    seconds: float = 0.0
    detail: str = ""


@dataclass
class LoadReport:
    """Totals of one run; ``lost`` and ``duplicated`` must be 0."""

    clients: int
    duration_s: float
    burst: int
    max_tokens: int
    models: list[str]
    sent: int = 0
    ok: int = 0
    rejected: int = 0  # 429/503 with Retry-After
    rejected_without_retry_after: int = 0
    errors: int = 0  # any other status, or a stream without [DONE]
    server_errors_5xx: int = 0
    timeouts: int = 0
    lost: int = 0  # sent but neither completed nor rejected (errors + timeouts)
    duplicated: int = 0  # completion ids seen twice
    server_counter_mismatch: dict[str, float] = field(default_factory=dict)
    burst_ok: int = 0
    burst_rejected: int = 0
    completion_tokens: int = 0
    tokens_per_s: float = 0.0
    requests_per_s: float = 0.0
    p50_s: float = 0.0
    p95_s: float = 0.0
    rss_mb: dict[str, float] = field(default_factory=dict)
    idle_after: bool = False
    error_samples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"sent {self.sent}, ok {self.ok}, rejected {self.rejected} (429/503), "
                f"errors {self.errors}, 5xx {self.server_errors_5xx}, timeouts "
                f"{self.timeouts}, lost {self.lost}, duplicated {self.duplicated}; burst "
                f"{self.burst}: ok {self.burst_ok}, rejected {self.burst_rejected}; "
                f"{self.requests_per_s:.1f} req/s, {self.tokens_per_s:.1f} tok/s; RSS MB "
                f"{self.rss_mb}")


def check_loopback(base_url: str) -> None:
    """Refuse anything but a loopback target: this tool is a load generator."""
    host = urlparse(base_url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to load-test {host!r}: only loopback targets are allowed")


def _rss_mb(pids: list[int]) -> float:
    """Resident memory of ``pids`` and all their children, in MB."""
    import psutil

    seen: set[int] = set()
    total = 0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
        for p in procs:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    return round(total / 2**20, 1)


def _metrics(base_url: str, metrics_key: str | None) -> dict[str, float]:
    """Sums per metric name + status label of the counters the check uses (``/metrics``
    needs an admin or metrics key on a server with keys)."""
    headers = {"Authorization": f"Bearer {metrics_key}"} if metrics_key else {}
    response = httpx.get(f"{base_url}/metrics", headers=headers, timeout=30)
    response.raise_for_status()
    text = response.text
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        value = float(line.rsplit(" ", 1)[1])
        if name == "tuneserve_requests_total":
            status = line.split('status="', 1)[1].split('"', 1)[0]
            out[f"requests_{status}"] += value
        elif name in ("tuneserve_requests_in_flight", "vllm:num_requests_running",
                      "vllm:num_requests_waiting"):
            out[name] += value
    return dict(out)


async def _one(client: httpx.AsyncClient, model: str, phase: str, max_tokens: int) -> Outcome:
    client_id = f"{phase}-{uuid.uuid4().hex}"
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "user": client_id,
            "temperature": 0.0,
            "messages": [{"role": "user", "content": "list all running containers"}]}
    started = time.perf_counter()
    outcome = Outcome(client_id, model, phase, None, "error")
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            outcome.status = response.status_code
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                outcome.retry_after = response.headers.get("retry-after")
                if response.status_code in (429, 503):
                    outcome.kind = "rejected"
                outcome.detail = text[:300]
                return outcome
            ids: set[str] = set()
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    outcome.detail = data[:300]
                    break
                ids.add(chunk["id"])
                for choice in chunk.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        outcome.tokens += 1
            if done and len(ids) == 1:
                outcome.kind, outcome.completion_id = "ok", ids.pop()
            elif not outcome.detail:
                outcome.detail = f"stream ended without [DONE] or with ids {sorted(ids)}"
    except httpx.TimeoutException as exc:
        outcome.kind, outcome.detail = "timeout", repr(exc)
    except httpx.HTTPError as exc:
        outcome.kind, outcome.detail = "error", repr(exc)
    finally:
        outcome.seconds = time.perf_counter() - started
    return outcome


async def _steady(base_url: str, key: str, models: list[str], clients: int,
                  duration_s: float, max_tokens: int) -> list[Outcome]:
    deadline = time.monotonic() + duration_s
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as client:

        async def worker(index: int) -> None:
            turn = index
            while time.monotonic() < deadline:
                outcome = await _one(client, models[turn % len(models)], "steady", max_tokens)
                outcomes.append(outcome)
                turn += 1
                if outcome.kind == "rejected":  # honour Retry-After, as a good client does
                    await asyncio.sleep(min(float(outcome.retry_after or 1), 5))

        await asyncio.gather(*(worker(i) for i in range(clients)))
    return outcomes


async def _burst(base_url: str, key: str, models: list[str], burst: int,
                 max_tokens: int) -> list[Outcome]:
    limits = httpx.Limits(max_connections=burst + 8, max_keepalive_connections=burst + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        return list(await asyncio.gather(*(
            _one(client, models[i % len(models)], "burst", max_tokens) for i in range(burst))))


def _wait_idle(base_url: str, metrics_key: str | None, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = _metrics(base_url, metrics_key)
        if not any(m.get(k, 0) for k in ("tuneserve_requests_in_flight",
                                          "vllm:num_requests_running",
                                          "vllm:num_requests_waiting")):
            return True
        time.sleep(0.5)
    return False


def run_load(base_url: str, key: str, models: list[str], *, clients: int = 64,
             duration_s: float = 60.0, burst: int = 256, max_tokens: int = 8,
             server_pids: list[int] | None = None, settle_s: float = 5.0,
             metrics_key: str | None = None) -> LoadReport:
    """Run the phases against ``base_url`` and return the report (see the module doc);
    ``metrics_key``: an admin or metrics key for ``/metrics``."""
    check_loopback(base_url)
    pids = server_pids or []
    report = LoadReport(clients, duration_s, burst, max_tokens, models)
    for model in models:  # warm-up: every model answers once
        warm = asyncio.run(_burst(base_url, key, [model], 1, max_tokens))[0]
        if warm.kind != "ok":
            raise RuntimeError(f"warm-up request to {model} failed: {warm}")
    report.rss_mb["before"] = _rss_mb(pids)
    before = _metrics(base_url, metrics_key)
    started = time.perf_counter()
    outcomes = asyncio.run(_steady(base_url, key, models, clients, duration_s, max_tokens))
    steady_s = time.perf_counter() - started
    report.rss_mb["after_steady"] = _rss_mb(pids)
    burst_outcomes = asyncio.run(_burst(base_url, key, models, burst, max_tokens))
    outcomes += burst_outcomes
    report.rss_mb["after_burst"] = _rss_mb(pids)
    report.idle_after = _wait_idle(base_url, metrics_key)
    time.sleep(settle_s)
    report.rss_mb["settled"] = _rss_mb(pids)
    after = _metrics(base_url, metrics_key)

    kinds = Counter(o.kind for o in outcomes)
    report.sent = len(outcomes)
    report.ok, report.rejected = kinds["ok"], kinds["rejected"]
    report.errors, report.timeouts = kinds["error"], kinds["timeout"]
    report.lost = report.errors + report.timeouts
    report.server_errors_5xx = sum(1 for o in outcomes
                                   if o.status is not None and o.status >= 500
                                   and o.kind != "rejected")
    report.rejected_without_retry_after = sum(1 for o in outcomes
                                              if o.kind == "rejected" and not o.retry_after)
    completion_ids = Counter(o.completion_id for o in outcomes if o.completion_id)
    report.duplicated = sum(n - 1 for n in completion_ids.values() if n > 1)
    report.burst_ok = sum(1 for o in burst_outcomes if o.kind == "ok")
    report.burst_rejected = sum(1 for o in burst_outcomes if o.kind == "rejected")
    # The server's own counters must agree with what the clients saw, status by status.
    seen = Counter(str(o.status) for o in outcomes if o.status is not None)
    for status in set(seen) | {k.removeprefix("requests_") for k in after
                               if k.startswith("requests_")}:
        delta = after.get(f"requests_{status}", 0) - before.get(f"requests_{status}", 0)
        if status == "503":
            continue  # 503 before admission (engine starting) is not counted per model
        if delta != seen.get(status, 0):
            report.server_counter_mismatch[status] = delta - seen.get(status, 0)
    report.completion_tokens = sum(o.tokens for o in outcomes)
    steady_ok = [o for o in outcomes if o.phase == "steady" and o.kind == "ok"]
    report.tokens_per_s = round(sum(o.tokens for o in steady_ok) / steady_s, 1)
    report.requests_per_s = round(len(steady_ok) / steady_s, 2)
    latencies = sorted(o.seconds for o in steady_ok)
    if latencies:
        report.p50_s = round(latencies[len(latencies) // 2], 3)
        report.p95_s = round(latencies[int(len(latencies) * 0.95) - 1], 3)
    report.error_samples = [f"{o.phase} {o.model} {o.status} {o.kind}: {o.detail}"
                            for o in outcomes if o.kind in ("error", "timeout")][:10]
    return report


def _start_server(model: str, n_adapters: int, workdir: Path, max_in_flight: int):
    """``tuneserve serve`` on ``model`` with ``n_adapters`` random LoRA adapters."""
    from tests.integration.conftest import start_server
    from tests.unit.service_lora import make_lora_adapter
    from training.base_models import resolve_model_path

    model_path = resolve_model_path(model)
    server = start_server(model_path, model_path.name, workdir, "--max-in-flight",
                          str(max_in_flight))
    names = []
    for i in range(n_adapters):
        adapter = make_lora_adapter(model_path, workdir / f"adapter-{i}", seed=i)
        server.register_adapter(adapter, f"load-a{i}")
        names.append(f"load-a{i}")
    return server, [server.model_id, *names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--base-url", help="a running server (loopback only)")
    target.add_argument("--start-server", metavar="MODEL",
                        help="start `tuneserve serve` on MODEL (name or folder) for the run")
    parser.add_argument("--key", help="user API key of --base-url")
    parser.add_argument("--metrics-key", help="admin or metrics API key of --base-url, for "
                        "its /metrics")
    parser.add_argument("--models", help="comma list of model ids (with --base-url)")
    parser.add_argument("--server-pid", type=int, action="append", default=[])
    parser.add_argument("--adapters", type=int, default=3, help="with --start-server")
    parser.add_argument("--max-in-flight", type=int, default=64, help="with --start-server")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--burst", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--json", type=Path, help="write the full report here")
    args = parser.parse_args(argv)

    server = None
    if args.start_server:
        from tests.integration.conftest import stop_server

        workdir = Path(tempfile.mkdtemp(prefix="tuneserve-load-"))
        server, models = _start_server(args.start_server, args.adapters, workdir,
                                       args.max_in_flight)
        base_url, key, pids = server.base_url, server.user_key, [server.process.pid]
        metrics_key = server.admin_key
    else:
        if not (args.key and args.models):
            parser.error("--base-url needs --key and --models")
        base_url, key, pids = args.base_url, args.key, args.server_pid
        metrics_key = args.metrics_key
        models = args.models.split(",")
    try:
        report = run_load(base_url, key, models, clients=args.clients,
                          duration_s=args.duration, burst=args.burst,
                          max_tokens=args.max_tokens, server_pids=pids,
                          metrics_key=metrics_key)
    finally:
        if server is not None:
            stop_server(server)
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    failed = report.lost or report.duplicated or report.server_errors_5xx \
        or report.rejected_without_retry_after or report.server_counter_mismatch
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
