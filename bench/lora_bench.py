"""CPU multi-LoRA serving: stock vLLM vs tuneserve, with vLLM's own CPU LoRA ops and ours.

Four arms, side by side in one run, arms alternating inside every round:

    A  stock vLLM OpenAI server, no LoRA, base requests
    B  tuneserve (LoRA enabled, tuneserve's grouped ops), base requests only
    C  tuneserve with vLLM's own CPU LoRA ops (TUNESERVE_CPU_LORA_OPS=vllm), adapter requests
    D  tuneserve with tuneserve's grouped ops, adapter requests

``--arms settings`` measures the two engine settings the CPU path leaves open, each against
grouped ops with compile off and vLLM's ``auto`` thread binding, with base and adapter
requests:

    B / D                VLLM_CPU_OMP_THREADS_BIND=auto, compile off
    B-compile/D-compile  TUNESERVE_CPU_LORA_COMPILE=1 (vLLM's CPU torch.compile kept with LoRA)
    B-bind/D-bind        VLLM_CPU_OMP_THREADS_BIND=0-(N-1): compute on every core, none reserved

Adapter requests go round-robin over ``--adapters`` random non-zero PEFT LoRAs of the base
(ranks 8 and 16 alternating, every linear layer, made here), so every LoRA slot is busy.
Each cell is ``--max-tokens`` output tokens per request (``ignore_eos``, greedy, streamed)
at a fixed number of concurrent clients; ``offline`` sends ``--offline`` requests at once
(an evaluation batch). All servers stay up; arms alternate inside every cell.

    flock /tmp/tuneserve-heavy.lock .venv/bin/python bench/lora_bench.py --write BENCHMARKS.md
    flock /tmp/tuneserve-heavy.lock .venv/bin/python bench/lora_bench.py --arms settings \
        --concurrency 8 32 --offline 0 --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve_bench import (  # noqa: E402
    ADMIN_KEY,
    PROMPTS,
    USER_KEY,
    bench_command,
    drive,
    free_port,
    stop_process_group,
    wait_ready,
    write_section,
)

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Server:
    name: str
    port: int
    key: str | None
    proc: subprocess.Popen


@dataclass(frozen=True)
class Arm:
    label: str
    what: str
    server: str
    adapters: bool


# Server name -> tuneserve environment (None: the stock vLLM server).
SERVERS: dict[str, dict[str, str] | None] = {
    "stock": None,
    "tuneserve-vllm-ops": {"TUNESERVE_CPU_LORA_OPS": "vllm"},
    "tuneserve": {},
    # The settings arms name their binding, so they measure the same thing whatever
    # tuneserve's default binding is (service/cpu_threads.py).
    "tuneserve-vllm-auto": {"VLLM_CPU_OMP_THREADS_BIND": "auto"},
    "tuneserve-compile": {"TUNESERVE_CPU_LORA_COMPILE": "1", "VLLM_CPU_OMP_THREADS_BIND": "auto"},
    "tuneserve-bind-all": {"VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}"},
}
ARM_SETS = {
    "ops": [
        Arm("A", "stock vLLM, no LoRA", "stock", False),
        Arm("B", "tuneserve, base requests only", "tuneserve", False),
        Arm("C", "tuneserve, adapters, vLLM's own CPU ops", "tuneserve-vllm-ops", True),
        Arm("D", "tuneserve, adapters, tuneserve's grouped ops", "tuneserve", True),
    ],
    "settings": [
        Arm("B", "vLLM's auto binding, compile off, base requests", "tuneserve-vllm-auto",
            False),
        Arm("D", "vLLM's auto binding, compile off, adapters", "tuneserve-vllm-auto", True),
        Arm("B-compile", "compile kept, base requests", "tuneserve-compile", False),
        Arm("D-compile", "compile kept, adapters", "tuneserve-compile", True),
        Arm("B-bind", "compute on every core, base requests", "tuneserve-bind-all", False),
        Arm("D-bind", "compute on every core, adapters", "tuneserve-bind-all", True),
    ],
}
RATIOS = {
    "ops": [("B", "A"), ("C", "A"), ("D", "A"), ("D", "C"), ("D", "B")],
    "settings": [("B-compile", "B"), ("D-compile", "D"), ("B-bind", "B"), ("D-bind", "D")],
}
SECTIONS = {
    "ops": ("<!-- lora-bench:start -->", "<!-- lora-bench:end -->",
            "## CPU multi-LoRA: stock vLLM vs tuneserve (vLLM's CPU ops vs grouped ops)"),
    "settings": ("<!-- lora-settings-bench:start -->", "<!-- lora-settings-bench:end -->",
                 "## CPU multi-LoRA: compilation and thread binding"),
}


def make_adapters(model_dir: Path, out: Path, count: int) -> dict[str, Path]:
    from tests.unit.service_lora import make_lora_adapter

    return {f"lora-{i}": make_lora_adapter(model_dir, out / f"lora-{i}", r=(8, 16)[i % 2],
                                           seed=i, target_modules=ALL_LINEAR)
            for i in range(count)}


def start(name: str, args, model_dir: Path, adapters: dict[str, Path], work: Path) -> Server:
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib)}
    if args.threads_bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = args.threads_bind  # every server, stock included
    if name == "stock":
        key = None
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
               str(model_dir), "--served-model-name", "base", "--dtype", "float32",
               "--host", "127.0.0.1", "--port", str(port), "--seed", "0",
               "--max-model-len", str(args.max_model_len)]
    else:
        key = USER_KEY
        watched = work / f"{name}-adapters"
        watched.mkdir(parents=True)
        for adapter, path in adapters.items():
            (watched / adapter).symlink_to(path)
        # Admission above the offline batch: the stock server has no in-flight limit either.
        env.update(TUNESERVE_HOME=str(work / f"{name}-home"), TUNESERVE_UI="0",
                   TUNESERVE_MAX_IN_FLIGHT=str(max(256, args.offline)),
                   TUNESERVE_USER_API_KEYS=USER_KEY, TUNESERVE_ADMIN_API_KEYS=ADMIN_KEY,
                   TUNESERVE_CPU_LORA_OPS="grouped", TUNESERVE_CPU_LORA_COMPILE="0")
        env.update(SERVERS[name] or {})
        cmd = [sys.executable, "-m", "tuneserve.cli", "serve", "--model", str(model_dir),
               "--served-model-name", "base", "--port", str(port), "--kv-cache-space",
               str(args.kv_cache_gib), "--adapters-dir", str(watched), "--max-model-len",
               str(args.max_model_len), "--max-loras", str(args.adapters),
               "--max-lora-rank", "16"]
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / f"{name}.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO)
    names = ["base"] if name == "stock" else ["base", *adapters]
    wait_ready(port, proc, key, names)
    return Server(name, port, key, proc)


def cells(args) -> list[tuple[str, int, int]]:
    """(cell name, concurrent clients, requests)."""
    out = [(f"c={c}", c, max(c * args.requests_per_client, 4)) for c in args.concurrency]
    if args.offline:
        out.append((f"offline {args.offline}", args.offline, args.offline))
    return out


def run(args, servers: dict[str, Server], adapters: list[str]) -> dict:
    """Rounds of every cell; inside a cell the arms run one after another."""
    results: dict[tuple[str, str], list[dict]] = {}
    for round_index in range(args.rounds):
        for cell, clients, requests in cells(args):
            for arm in ARM_SETS[args.arms]:
                server = servers[arm.server]
                models = adapters if arm.adapters else ["base"]
                load = [(models[i % len(models)], PROMPTS[i % len(PROMPTS)])
                        for i in range(requests)]
                drive_args = argparse.Namespace(max_tokens=args.max_tokens, clients=clients)
                result = asyncio.run(drive(server.port, server.key, load, drive_args))
                results.setdefault((cell, arm.label), []).append(result)
                print(round_index, cell, arm.label, json.dumps(result), flush=True)
    return {k: {m: statistics.median(r[m] for r in rs) for m in rs[0]}
            for k, rs in results.items()}


def markdown(args, results: dict, command: str) -> str:
    start, end, title = SECTIONS[args.arms]
    lines = [
        start, title, "",
        f"{args.max_tokens} output tokens per request (ignore_eos, greedy, streamed); adapter "
        f"arms round-robin over {args.adapters} random LoRAs (r 8/16, every linear layer; "
        f"`max_loras` {args.adapters}, `max_lora_rank` 16). Median tokens/s over "
        f"{args.rounds} rounds; arms alternate inside every cell of every round (all servers "
        f"up, one loaded at a time). Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
        f"    {command}", "",
        "| arm | setup | " + " | ".join(c for c, _, _ in cells(args)) + " |",
        "|---|---|" + "---:|" * len(cells(args)),
    ]
    for arm in ARM_SETS[args.arms]:
        row = [f"{results[(c, arm.label)]['tok_per_s']:.1f}" for c, _, _ in cells(args)]
        lines.append(f"| {arm.label} | {arm.what} | " + " | ".join(row) + " |")
    for num, den in RATIOS[args.arms]:
        row = [f"{results[(c, num)]['tok_per_s'] / results[(c, den)]['tok_per_s']:.2f}x"
               for c, _, _ in cells(args)]
        lines.append(f"| {num}/{den} | ratio | " + " | ".join(row) + " |")
    lines.append(end)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--arms", choices=sorted(ARM_SETS), default="ops",
                        help="ops: arms A-D (stock vs vLLM's ops vs ours); settings: compile "
                        "and thread binding against tuneserve's defaults")
    parser.add_argument("--threads-bind",
                        help="VLLM_CPU_OMP_THREADS_BIND for every server of the run (e.g. "
                        "auto, or 0-1); default: each server's own default")
    parser.add_argument("--offline", type=int, default=100, help="0 to skip the offline cell")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", type=Path, help="update this Markdown file's section")
    args = parser.parse_args(argv)

    from training.base_models import resolve_model_path

    model_dir = resolve_model_path(args.model)
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as tmp:
        work = Path(tmp)
        adapters = make_adapters(model_dir, work, args.adapters)
        servers: dict[str, Server] = {}
        try:
            # All up at once (idle servers cost no CPU; ~6 GB each with a 1 GiB KV cache),
            # so arms alternate inside every cell of every round without restarts.
            for name in dict.fromkeys(arm.server for arm in ARM_SETS[args.arms]):
                servers[name] = start(name, args, model_dir, adapters, work)
                print("ready:", name, flush=True)
            results = run(args, servers, list(adapters))
        finally:
            for server in servers.values():
                stop_process_group(server.proc)
    command = bench_command("lora_bench.py", argv)
    section = markdown(args, results, command)
    print(section)
    if args.write:
        start_marker, end_marker, _ = SECTIONS[args.arms]
        write_section(args.write, section, start_marker, end_marker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
