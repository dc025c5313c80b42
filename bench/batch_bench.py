"""The Batch API against online requests on one tuneserve server (real Gemma), side by
side in one run: throughput of the same requests sent online by concurrent clients and as
one ``/v1/batches`` batch, and what a running batch costs interactive requests.

Arms, alternating inside every round:
- ``online``: ``--requests`` chat completions from ``--clients`` concurrent SDK clients;
- ``batch``: the same requests as one batch (create → completed, polled every 0.2 s);
- ``interactive alone`` / ``interactive during batch``: ``--probes`` sequential chat
  requests, first on an idle server, then while a batch of ``--requests`` runs.
Every request: greedy, exactly ``--max-tokens`` output tokens (``ignore_eos``).

    flock /tmp/tuneserve-heavy.lock .venv/bin/python bench/batch_bench.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve_bench import (  # noqa: E402
    PROMPTS,
    USER_KEY,
    bench_command,
    free_port,
    stop_process_group,
    wait_ready,
    write_section,
)

START, END = "<!-- batch-bench:start -->", "<!-- batch-bench:end -->"


def body(args, i: int) -> dict:
    return {"model": "base", "temperature": 0, "max_tokens": args.max_tokens,
            "ignore_eos": True,
            "messages": [{"role": "user", "content": f"{i}. {PROMPTS[i % len(PROMPTS)]}"}]}


def chat(client, args, i: int) -> tuple[float, int]:
    started = time.perf_counter()
    payload = body(args, i)
    ignore_eos = payload.pop("ignore_eos")
    response = client.chat.completions.create(**payload, extra_body={"ignore_eos": ignore_eos})
    return time.perf_counter() - started, response.usage.completion_tokens


def online(client, args) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(lambda i: chat(client, args, i), range(args.requests)))
    wall = time.perf_counter() - started
    return {"tok_per_s": sum(t for _, t in results) / wall, "wall_s": wall}


def batch(client, args) -> dict:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": body(args, i)} for i in range(args.requests)]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    started = time.perf_counter()
    upload = client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
    created = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                    completion_window="24h")
    while (status := client.batches.retrieve(created.id)).status not in (
            "completed", "failed", "cancelled", "expired"):
        time.sleep(0.2)
    wall = time.perf_counter() - started
    assert status.status == "completed" and status.request_counts.failed == 0, status
    return {"tok_per_s": args.requests * args.max_tokens / wall, "wall_s": wall,
            "batch_id": created.id}


def probes(client, args) -> list[float]:
    return [chat(client, args, 1000 + i)[0] for i in range(args.probes)]


def probes_during_batch(client, args) -> list[float]:
    done: dict = {}
    runner = threading.Thread(target=lambda: done.update(batch(client, args)))
    runner.start()
    # Probe once the batch is running, not while it is still being uploaded.
    while not any(b.status == "in_progress" for b in client.batches.list(limit=1).data):
        time.sleep(0.1)
    latencies = probes(client, args)
    runner.join()
    return latencies


def markdown(args, rows: dict[str, list[float]], command: str) -> str:
    med = {k: statistics.median(v) for k, v in rows.items()}
    return "\n".join([
        START, "## Batch API vs online requests", "",
        f"One tuneserve server (real Gemma 3 270M, base model, default settings: batch "
        f"concurrency 4, vLLM priority scheduling). {args.requests} chat requests of "
        f"{args.max_tokens} output tokens (greedy, ignore_eos); online from {args.clients} "
        f"concurrent SDK clients; {args.probes} sequential interactive probes. Medians over "
        f"{args.rounds} round(s), arms alternating. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
        f"    {command}", "",
        "| arm | tokens/s | x online | interactive p50 latency s |",
        "|---|---:|---:|---:|",
        f"| online ({args.clients} clients) | {med['online']:.1f} | 1.00x | |",
        f"| batch | {med['batch']:.1f} | {med['batch'] / med['online']:.2f}x | |",
        f"| interactive alone | | | {med['probe_alone']:.2f} |",
        f"| interactive during a batch | | | {med['probe_batch']:.2f} "
        f"({med['probe_batch'] / med['probe_alone']:.2f}x) |",
        "", END,
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--probes", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)

    import openai

    from training.prepare import prepare_base_model

    model_dir = prepare_base_model(args.model)
    rows: dict[str, list[float]] = {"online": [], "batch": [], "probe_alone": [],
                                    "probe_batch": []}
    with tempfile.TemporaryDirectory() as work:
        port = free_port()
        env = {**os.environ, "TUNESERVE_HOME": str(Path(work) / "home"), "TUNESERVE_UI": "0",
               "TUNESERVE_USER_API_KEYS": USER_KEY, "TUNESERVE_JOBS_ENABLED": "0"}
        cmd = [sys.executable, "-m", "tuneserve.cli", "serve", "--model", str(model_dir),
               "--served-model-name", "base", "--port", str(port), "--max-model-len", "1024",
               "--kv-cache-space", "1"]
        with open(Path(work) / "server.log", "wb") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=REPO)
        try:
            wait_ready(port, proc, USER_KEY, ["base"])
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=USER_KEY,
                                   timeout=600)
            chat(client, args, 0)  # warm-up
            for r in range(args.rounds):
                arms = ["online", "batch"] if r % 2 == 0 else ["batch", "online"]
                for arm in arms:
                    result = online(client, args) if arm == "online" else batch(client, args)
                    rows[arm].append(result["tok_per_s"])
                rows["probe_alone"].append(statistics.median(probes(client, args)))
                rows["probe_batch"].append(statistics.median(probes_during_batch(client, args)))
                print(f"round {r + 1}: " + ", ".join(f"{k}={v[-1]:.2f}" for k, v in rows.items()),
                      flush=True)
        finally:
            stop_process_group(proc)
    section = markdown(args, rows, bench_command("batch_bench.py", argv))
    print(section)
    if args.write:
        write_section(args.write, section, START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
