"""Serving paths for non-LoRA fine-tunes, measured side by side in one run (issue #19):
the transformers+PEFT engine (tuneserve's ``RoutedEngine`` path) vs merging into a
base-sized checkpoint served by its own vLLM engine, with plain LoRA on vLLM and the base
alone as references.

Subjects: an IA3 adapter (mergeable; PEFT's IA3Config, weights perturbed so it is not the
identity) and a full fine-tune (every weight perturbed), both of the base; a LoRA (r=8)
for the vLLM LoRA path. Speed and memory do not depend on what the weights learned, so
nothing is trained here. Each server is ``tuneserve serve`` in its own process group, one
at a time:

- server 1, the base: the base, then the LoRA, the IA3 and the full fine-tune registered
  through ``POST /v1/adapters`` (the LoRA lands on vLLM, the other two on the PEFT engine);
- server 2, the IA3 merged with ``tuneserve export --merge`` (``training.export``) as base;
- server 3, the full fine-tune's checkpoint as base.

Per model: streamed completions of exactly ``--max-tokens`` tokens (ignore_eos, greedy),
the same prompts: ``--single`` one at a time (tokens/s and TTFT p50), then ``--requests``
over ``--clients`` concurrent streams (aggregate tokens/s). Memory: the server process
tree's RSS; an adapter's added memory is the RSS after registering and using it minus
before. Load time: the registration call (PEFT engine: a base copy + the adapter) or, for
a merged checkpoint, merging + saving + starting its server.

    flock /tmp/tuneserve-heavy.lock .venv/bin/python bench/serving_paths_bench.py \
        --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve_bench import (  # noqa: E402 - after the path setup
    ADMIN_KEY,
    bench_command,
    drive,
    start_tuneserve,
    stop_process_group,
    wait_ready,
    write_section,
)

START, END = "<!-- serving-paths-bench:start -->", "<!-- serving-paths-bench:end -->"


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (vLLM's engine core is a child)."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def make_subjects(model_dir: Path, work: Path) -> dict[str, Path]:
    """A LoRA, an IA3 and a full fine-tune of ``model_dir``, saved under ``work``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.unit.service_peft import make_full_finetune, make_peft_adapter

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=8, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    get_peft_model(model, lora).save_pretrained(work / "lora", safe_serialization=True)
    return {
        "lora": work / "lora",
        "ia3": make_peft_adapter(model_dir, work / "ia3", "ia3"),
        "full": make_full_finetune(model_dir, work / "full"),
    }


class Server:
    """``tuneserve serve`` on ``model_dir`` (served as "base"), started and ready."""

    def __init__(self, args, model_dir: Path, work: Path) -> None:
        work.mkdir(parents=True)
        cmd, env, self.port, self.key = start_tuneserve(args, model_dir, {}, work)
        self.log = open(work / "server.log", "wb")
        started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=REPO)
        wait_ready(self.port, self.proc, self.key, ["base"])
        self.startup_s = time.perf_counter() - started

    def register(self, name: str, path: Path) -> float:
        import httpx

        started = time.perf_counter()
        response = httpx.post(f"http://127.0.0.1:{self.port}/v1/adapters",
                              json={"name": name, "path": str(path)}, timeout=600,
                              headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        if response.status_code != 201:
            raise SystemExit(f"registering {name}: HTTP {response.status_code} {response.text}")
        return time.perf_counter() - started

    def measure(self, args, model: str) -> dict:
        from bench.serve_bench import PROMPTS

        single = [(model, PROMPTS[i % len(PROMPTS)]) for i in range(args.single)]
        many = [(model, PROMPTS[i % len(PROMPTS)]) for i in range(args.requests)]
        one = asyncio.run(drive(self.port, self.key, single,
                                SimpleNamespace(clients=1, max_tokens=args.max_tokens)))
        conc = asyncio.run(drive(self.port, self.key, many,
                                 SimpleNamespace(clients=args.clients, max_tokens=args.max_tokens)))
        # The machine is shared: the 1-minute load average shows how contended it was.
        return {"tok_s_1": one["tok_per_s"], "ttft_s": one["ttft_p50_s"],
                "tok_s_n": conc["tok_per_s"], "rss_mib": tree_rss_mib(self.proc.pid),
                "load": os.getloadavg()[0]}

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.log.close()


def run(args, model_dir: Path, work: Path) -> dict[str, dict]:
    from training.export import export_merged

    subjects = make_subjects(model_dir, work)
    results: dict[str, dict] = {}

    server = Server(args, model_dir, work / "server-base")
    try:
        base = server.measure(args, "base")
        results["base (vLLM)"] = {**base, "load_s": server.startup_s, "added_mib": 0.0,
                                  "path": "reference"}
        print("base", json.dumps(base), flush=True)
        for name, label in (("lora", "LoRA r=8 (vLLM LoRA)"), ("ia3", "IA3 (PEFT engine)"),
                            ("full", "full fine-tune (PEFT engine)")):
            before = tree_rss_mib(server.proc.pid)
            load_s = server.register(name, subjects[name])
            result = server.measure(args, name)
            results[label] = {**result, "load_s": load_s,
                              "added_mib": result["rss_mib"] - before, "path": "registered"}
            print(name, json.dumps(results[label]), flush=True)
    finally:
        server.stop()

    started = time.perf_counter()
    merged = export_merged(str(subjects["ia3"]), work / "ia3-merged")
    merge_s = time.perf_counter() - started
    for label, checkpoint, extra_s in (("IA3 merged (own vLLM engine)", merged, merge_s),
                                       ("full fine-tune (own vLLM engine)", subjects["full"], 0.0)):
        server = Server(args, checkpoint, work / f"server-{checkpoint.name}")
        try:
            result = server.measure(args, "base")
            # A merged checkpoint is a whole engine: all of its memory is the adapter's.
            results[label] = {**result, "load_s": extra_s + server.startup_s,
                              "added_mib": result["rss_mib"], "path": "own engine"}
            print(label, json.dumps(results[label]), flush=True)
        finally:
            server.stop()
    return results


def markdown(args, results: dict[str, dict], command: str) -> str:
    ref = results["base (vLLM)"]
    lines = [
        START, "## Serving paths", "",
        "Non-LoRA fine-tunes served by the transformers+PEFT engine (registered on the base "
        "server, tuneserve's `RoutedEngine`) vs merged into a base-sized checkpoint on its own "
        "vLLM engine (`tuneserve serve --model MERGED`), with the base and a plain LoRA on "
        f"vLLM as references. Per model: {args.single} streamed completions one at a time, "
        f"then {args.requests} over {args.clients} concurrent streams; {args.max_tokens} "
        "output tokens each (ignore_eos, greedy), the same prompts. RSS: the server process "
        "tree. Added memory: RSS after registering and using the adapter minus before (for "
        "an own engine: its whole RSS). Load: the registration call, or merge + save + "
        "server start. Load avg: the machine's 1-minute load average after the model's "
        "measurement (other work on a shared machine slows every path). Ratios vs the base "
        "on vLLM. Figures from one run.", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "", f"    {command}", "",
        "| model (path) | tok/s 1 stream | x base | tok/s "
        f"{args.clients} streams | x base | TTFT p50 s | x base | server RSS MiB | "
        "added MiB | load s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r['tok_s_1']:.1f} | {r['tok_s_1'] / ref['tok_s_1']:.2f}x | "
            f"{r['tok_s_n']:.1f} | {r['tok_s_n'] / ref['tok_s_n']:.2f}x | {r['ttft_s']:.3f} | "
            f"{r['ttft_s'] / ref['ttft_s']:.2f}x | {r['rss_mib']:.0f} | {r['added_mib']:.0f} | "
            f"{r['load_s']:.1f} | {r['load']:.1f} |")
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--single", type=int, default=4, help="one-at-a-time requests")
    parser.add_argument("--requests", type=int, default=16, help="concurrent-phase requests")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--threads-bind", help="VLLM_CPU_OMP_THREADS_BIND for every server")
    parser.add_argument("--write", type=Path, help="update this Markdown file's section")
    args = parser.parse_args(argv)
    args.adapters = 1  # start_tuneserve's LoRA slots

    from training.base_models import resolve_model_path

    model_dir = resolve_model_path(args.model)
    with tempfile.TemporaryDirectory(prefix="serving-paths-") as tmp:
        results = run(args, Path(model_dir), Path(tmp))
    section = markdown(args, results, bench_command("serving_paths_bench.py", argv))
    print(section)
    if args.write:
        write_section(args.write, section, START, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
