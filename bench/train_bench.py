"""Training throughput: `tuneserve train` vs a plain TRL SFTTrainer script, side by side.

Same base model (Gemma 3 270M), same docker-commands training rows (the docker-lora.yaml
split), same LoRA (r16, alpha 32, all-linear), batch size, learning rate and steps. Each
contender runs in its own subprocess (so peak RSS is its own) and reports:

- tokens/s: real (non-padding) tokens per second over the steps after the first (TRL's own
  ``num_tokens`` count, the same definition for both),
- s/step, and peak resident memory (ru_maxrss).

Contenders: ``plain-trl-bf16`` (the lead's reference recipe), ``plain-trl-fp32`` (same
script in float32), ``tuneserve`` (docker-lora.yaml: float32, compact LM head, rows grouped
by length) and ``tuneserve-full-head`` (ours without the compact head, to isolate it).

    TUNESERVE_HOME=/tmp/tshome python bench/train_bench.py --steps 8 --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "training" / "configs" / "docker-lora.yaml"
CONTENDERS = ("plain-trl-bf16", "plain-trl-fp32", "tuneserve-full-head", "tuneserve")


def _timing_callback():
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        """Tokens and time between the end of step 1 and the last step (skips warm-up)."""

        def __init__(self):
            self.marks: list[tuple[int, float, float]] = []
            self._tokens = 0.0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                self._tokens = float(logs["num_tokens"])
                self.marks.append((state.global_step, time.monotonic(), self._tokens))

        def result(self) -> dict:
            (s0, t0, n0), (s1, t1, n1) = self.marks[0], self.marks[-1]
            return {
                "steps_timed": s1 - s0,
                "tokens_per_s": (n1 - n0) / (t1 - t0),
                "s_per_step": (t1 - t0) / (s1 - s0),
                "tokens": n1,
            }

    return Timing()


def run_plain_trl(steps: int, dtype: str) -> dict:
    """The plain recipe: TRL SFTTrainer on prompt/completion messages + a PEFT LoraConfig."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from training.base_models import resolve_model_path
    from training.config import load_config
    from training.data import prepare_data

    config = load_config(CONFIG)
    path = resolve_model_path(config.base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = prepare_data(config, tokenizer).train
    dataset = Dataset.from_list(
        [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    timing = _timing_callback()
    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(
                output_dir=out,
                per_device_train_batch_size=config.micro_batch_size,
                learning_rate=config.learning_rate,
                lr_scheduler_type=config.lr_scheduler,
                max_steps=steps,
                logging_steps=1,
                save_strategy="no",
                report_to="none",
                bf16=dtype == "bfloat16",
                use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 on CPU otherwise
                max_length=config.sequence_len,
                seed=config.seed,
                disable_tqdm=True,
                dataloader_pin_memory=False,
            ),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
            callbacks=[timing],
        )
        trainer.train()
    return timing.result()


def run_tuneserve(steps: int, compact: bool) -> dict:
    """Our trainer on docker-lora.yaml (as `tuneserve train` runs it)."""
    from training.config import load_config
    from training.sft import train

    timing = _timing_callback()
    with tempfile.TemporaryDirectory() as out:
        config = load_config(
            CONFIG,
            [
                f"max_steps={steps}",
                "logging_steps=1",
                f"save_steps={steps + 1}",
                f"output_dir={out}",
                "eval_max_rows=8",
                f"compact_lm_head={str(compact).lower()}",
            ],
        )
        train(config, callbacks=[timing], progress_bar=False)
    return timing.result()


def child(name: str, steps: int) -> None:
    if name == "plain-trl-bf16":
        result = run_plain_trl(steps, "bfloat16")
    elif name == "plain-trl-fp32":
        result = run_plain_trl(steps, "float32")
    else:
        result = run_tuneserve(steps, compact=name == "tuneserve")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--only", nargs="*", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps)
        return 0
    results = {}
    for name in args.only:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        results[name] = json.loads(line[len("RESULT ") :])
        results[name]["wall_s"] = time.monotonic() - started
        print(name, results[name], flush=True)
    table = render(results, args)
    print(table)
    if args.write:
        path = REPO / "BENCHMARKS.md"
        text = path.read_text() if path.exists() else "# Benchmarks\n"
        path.write_text(text.rstrip("\n") + "\n\n" + table + "\n")
    return 0


def render(results: dict, args) -> str:
    ref_name = next(n for n in CONTENDERS if n in results)  # the first plain-TRL arm run
    ref = results[ref_name]
    lines = [
        "## Training",
        "",
        f"`TUNESERVE_HOME=... python bench/train_bench.py --steps {args.steps} "
        f"--only {' '.join(results)} --write` "
        f"({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads default). Gemma 3 270M, LoRA r16 all-linear, batch 8, docker rows, "
        f"timed over steps 2..{args.steps}.",
        "",
        f"| trainer | tokens/s | s/step | peak RSS (MB) | speed vs {ref_name} |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['tokens_per_s']:.0f} | {r['s_per_step']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['tokens_per_s'] / ref['tokens_per_s']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
