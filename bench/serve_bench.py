"""Serving throughput and latency: tuneserve vs the stock vLLM OpenAI server vs plain
transformers+PEFT, on the same mixed workload, side by side in one run.

Workload: ``--requests`` completions spread round-robin over the base model and
``--adapters`` LoRA adapters (random non-zero PEFT LoRAs of the base, r=8, made here),
fixed prompts, exactly ``--max-tokens`` output tokens each (``ignore_eos``), greedy,
streamed, ``--clients`` concurrent clients. Both servers get identical engine options
(float32, max_model_len, LoRA slots, KV cache size); tuneserve runs with API keys on, so
auth, metrics and the registry are part of what is measured. The transformers+PEFT
baseline runs the same requests one at a time in-process (it has no batching server).

    flock /tmp/tuneserve-heavy.lock .venv/bin/python bench/serve_bench.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

START, END = "<!-- serve-bench:start -->", "<!-- serve-bench:end -->"
PROMPTS = [
    "Translate to a docker command: list all running containers.",
    "Translate to a docker command: remove the image named nginx.",
    "Explain in one sentence what a container registry is.",
    "Translate to a docker command: show the logs of the container web.",
    "Write a short note about keeping base images small.",
    "Translate to a docker command: run redis in the background on port 6379.",
]
USER_KEY, ADMIN_KEY = "bench-user-key-0123456789", "bench-admin-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_adapters(model_dir: Path, out: Path, count: int) -> dict[str, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapters = {}
    for i in range(count):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        config = LoraConfig(r=8, lora_alpha=8, init_lora_weights=False,
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        path = out / f"bench-lora-{i}"
        get_peft_model(model, config).save_pretrained(path, safe_serialization=True)
        adapters[path.name] = path
    return adapters


def engine_flags(args) -> list[str]:
    return ["--max-model-len", str(args.max_model_len), "--max-lora-rank", "16",
            "--max-loras", str(max(1, args.adapters)), "--max-cpu-loras", "16"]


def start_tuneserve(args, model_dir: Path, adapters: dict[str, Path], work: Path):
    port = free_port()
    adapters_dir = work / "watched"
    adapters_dir.mkdir()
    for name, path in adapters.items():
        (adapters_dir / name).symlink_to(path)
    env = {**os.environ, **bind_env(args), "TUNESERVE_HOME": str(work / "home"),
           "TUNESERVE_UI": "0", "TUNESERVE_USER_API_KEYS": USER_KEY,
           "TUNESERVE_ADMIN_API_KEYS": ADMIN_KEY,
           # With no adapter, `make run`'s demo fine-tuning job would train beside the bench.
           "TUNESERVE_JOBS_DEMO_JOB_IF_NO_ADAPTERS": "0"}
    cmd = [sys.executable, "-m", "tuneserve.cli", "serve", "--model", str(model_dir),
           "--served-model-name", "base", "--port", str(port), "--kv-cache-space",
           str(args.kv_cache_gib), "--adapters-dir", str(adapters_dir), *engine_flags(args)]
    return cmd, env, port, USER_KEY


def bind_env(args) -> dict[str, str]:
    """The same compute-thread binding for every server (default: each server's own)."""
    return {"VLLM_CPU_OMP_THREADS_BIND": args.threads_bind} if args.threads_bind else {}


def start_stock(args, model_dir: Path, adapters: dict[str, Path], work: Path):
    port = free_port()
    env = {**os.environ, **bind_env(args), "VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib)}
    # tuneserve's engine runs the priority policy (online before batch requests).
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
           str(model_dir), "--served-model-name", "base", "--dtype", "float32",
           "--host", "127.0.0.1", "--port", str(port), "--seed", "0", "--enable-lora",
           "--scheduling-policy", "priority",
           *engine_flags(args)]
    if adapters:
        cmd += ["--lora-modules", *[f"{name}={path}" for name, path in adapters.items()]]
    return cmd, env, port, None


def wait_ready(port: int, proc: subprocess.Popen, key: str | None, names: list[str]) -> float:
    import httpx

    started = time.monotonic()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    while time.monotonic() - started < 600:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=headers, timeout=2)
            if r.status_code == 200 and set(names) <= {m["id"] for m in r.json()["data"]}:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("server did not become ready")


def workload(args, names: list[str]) -> list[tuple[str, str]]:
    return [(names[i % len(names)], PROMPTS[i % len(PROMPTS)]) for i in range(args.requests)]


async def drive(port: int, key: str | None, requests, args) -> dict:
    """Send the requests with ``args.clients`` concurrent streaming clients."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    queue: asyncio.Queue = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    latencies, ttfts, tokens = [], [], []

    async def one(client: httpx.AsyncClient, model: str, prompt: str) -> None:
        body = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens,
                "temperature": 0, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        first = None
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                raise SystemExit(f"{model}: HTTP {response.status_code} {await response.aread()}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if first is None and chunk.get("choices") and chunk["choices"][0]["text"]:
                    first = time.perf_counter()
                if chunk.get("usage"):
                    tokens.append(chunk["usage"]["completion_tokens"])
        end = time.perf_counter()
        latencies.append(end - started)
        ttfts.append((first or end) - started)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            model, prompt = queue.get_nowait()
            await one(client, model, prompt)

    limits = httpx.Limits(max_connections=args.clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers,
                                 timeout=600, limits=limits) as client:
        names = sorted({m for m, _ in requests})
        await asyncio.gather(*(one(client, m, PROMPTS[0]) for m in names))  # warm-up
        latencies.clear(), ttfts.clear(), tokens.clear()
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(args.clients)))
        wall = time.perf_counter() - started
    return summarize(wall, latencies, ttfts, tokens)


def summarize(wall: float, latencies, ttfts, tokens) -> dict:
    def pct(values, q):
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
            else values[0]

    return {"requests": len(latencies), "wall_s": wall, "tokens": sum(tokens),
            "tok_per_s": sum(tokens) / wall, "p50_s": pct(latencies, 50),
            "p95_s": pct(latencies, 95), "ttft_p50_s": pct(ttfts, 50)}


def run_server(kind: str, args, model_dir: Path, adapters: dict[str, Path], work: Path) -> dict:
    starter = start_tuneserve if kind == "tuneserve" else start_stock
    cmd, env, port, key = starter(args, model_dir, adapters, work)
    log = open(work / f"{kind}.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO)
    try:
        names = ["base", *adapters]
        start_s = wait_ready(port, proc, key, names)
        result = asyncio.run(drive(port, key, workload(args, names), args))
        result["startup_s"] = start_s
        return result
    finally:
        stop_process_group(proc)
        log.close()


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGINT a server's process group (graceful), SIGKILL it after 30 s."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_hf(args, model_dir: Path, adapters: dict[str, Path]) -> dict:
    """transformers + PEFT, one request at a time (greedy, fixed length)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    names = list(adapters)
    peft = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(adapters[name], adapter_name=name)
    config = model.generation_config
    config.eos_token_id, config.do_sample, config.max_new_tokens = None, False, args.max_tokens
    config.pad_token_id = tokenizer.pad_token_id
    requests = workload(args, ["base", *names])[: args.hf_requests]
    latencies, tokens = [], []
    started = time.perf_counter()
    for model_name, prompt in requests:
        t0 = time.perf_counter()
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            if model_name == "base":
                with peft.disable_adapter():
                    out = peft.generate(input_ids=ids, generation_config=config)
            else:
                peft.set_adapter(model_name)
                out = peft.generate(input_ids=ids, generation_config=config)
        tokens.append(out.shape[1] - ids.shape[1])
        latencies.append(time.perf_counter() - t0)
    return summarize(time.perf_counter() - started, latencies, latencies, tokens)


def markdown(args, results: dict[str, dict], command: str) -> str:
    stock = results.get("vllm-stock")
    lines = [
        START, "## Serving", "",
        f"Mixed workload: {args.requests} streamed completions round-robin over the base and "
        f"{args.adapters} LoRA adapters (r=8), {args.max_tokens} output tokens each "
        f"(ignore_eos, greedy), {args.clients} concurrent clients. Same engine options for "
        "both servers; tuneserve with API keys on. transformers+PEFT runs "
        f"{args.hf_requests} of the requests one at a time in-process (no queueing, so its "
        "latencies are per request alone). Medians over "
        f"{args.rounds} round(s); servers alternate.", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
        f"    {command}", "",
        "| system | tokens/s | x stock tput | p50 latency s | p95 latency s | x stock p50 | "
        "x stock p95 | TTFT p50 s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    def ratio_of(r: dict, key: str) -> str:
        return f"{r[key] / stock[key]:.2f}x" if stock else "n/a"

    for name, r in results.items():
        def ratio(key: str, r=r) -> str:
            return ratio_of(r, key)

        lines.append(
            f"| {name} | {r['tok_per_s']:.1f} | {ratio('tok_per_s')} | {r['p50_s']:.2f} | "
            f"{r['p95_s']:.2f} | {ratio('p50_s')} | {ratio('p95_s')} | {r['ttft_p50_s']:.2f} |")
    if stock and "tuneserve" in results:
        ratio = results["tuneserve"]["tok_per_s"] / stock["tok_per_s"]
        verdict = "meets" if ratio >= 0.95 else "misses"
        lines += ["", f"tuneserve reaches {ratio:.2f}x the stock vLLM server's throughput "
                      f"({verdict} the 0.95x target)."]
    lines.append(END)
    return "\n".join(lines)


def bench_command(script: str, argv: list[str] | None) -> str:
    """The command line a results section quotes: how to run this benchmark again."""
    args = " ".join(argv if argv is not None else sys.argv[1:])
    return f"flock /tmp/tuneserve-heavy.lock .venv/bin/python bench/{script} {args}".strip()


def write_section(path: Path, section: str, start: str = START, end: str = END) -> None:
    """Replace the ``start``..``end`` section of the Markdown file ``path`` (or append it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: section, text,
                      flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--adapters", type=int, default=3)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--hf-requests", type=int, default=8)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="medians over this many runs")
    parser.add_argument("--threads-bind", help="VLLM_CPU_OMP_THREADS_BIND for every server "
                        "(e.g. 0-1); default: each server's own default")
    parser.add_argument("--systems", default="vllm-stock,tuneserve,transformers-peft")
    parser.add_argument("--write", type=Path, help="update this Markdown file's Serving section")
    args = parser.parse_args(argv)

    from training.base_models import resolve_model_path

    model_dir = resolve_model_path(args.model)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        adapters = make_adapters(model_dir, work, args.adapters)
        runs: dict[str, list[dict]] = {}
        # Servers alternate round by round so slow drifts of the machine hit both alike.
        for round_index in range(args.rounds):
            for system in args.systems.split(","):
                if system == "transformers-peft" and round_index:
                    continue
                system_work = work / f"{system}-{round_index}"
                system_work.mkdir()
                if system == "transformers-peft":
                    result = run_hf(args, model_dir, adapters)
                else:
                    result = run_server(system, args, model_dir, adapters, system_work)
                runs.setdefault(system, []).append(result)
                print(system, round_index, json.dumps(result), flush=True)
        results = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                   for name, rs in runs.items()}
    command = bench_command("serve_bench.py", argv)
    section = markdown(args, results, command)
    print(section)
    if args.write:
        write_section(args.write, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
