"""Every fine-tuning method on the docker-commands data, same CPU-time budget, one server.

Phase 1 (training): for each method a YAML config is generated (same data, split, seed,
batch, max length, scheduler; the method's own learning rate) and trained in its own
subprocess through the product's training path (``training.config.load_config`` +
``training.sft.train``, exactly what ``tuneserve train CONFIG`` runs) plus one extra
``TrainerCallback`` that stops the run when the process's CPU time spent in the training
loop reaches ``--cpu-budget-s``. CPU time, not wall time: the machine is shared, and a
noisy neighbour then slows a run down without cutting its budget. The child's total CPU
time and peak RSS come from ``os.wait4`` (its own rusage).

Phase 2 (evaluation): ONE ``tuneserve serve`` on the real base with every adapter in its
watched folder, so each request is routed to the engine ``/v1/models`` names (LoRA and
rsLoRA/QLoRA/LoRA-FA on vLLM, the rest on the transformers+PEFT engine). The evaluation
harness (``evaluation.runner.collect`` + ``summarise``) scores each method against the base
on the same held-out rows (the adapters' saved split, first ``--eval-rows``): exact match
and chrF, and the 95% paired-bootstrap CI of the difference to the base. Each model is
collected alone (after a 2-row warm-up) so its tokens/s = generated tokens / wall is its own.

Heavy steps take ``/tmp/tuneserve-heavy.lock`` one at a time (one training, or the whole
evaluation), so other work interleaves; results go to ``OUT/results.json`` after each step
and a re-run resumes from it (same budget and rows, or it refuses).

    python bench/methods_bench.py --cpu-budget-s 120 --eval-rows 60 --out /tmp/methods
    python bench/methods_bench.py --only lora ia3 --cpu-budget-s 20 --eval-rows 8 --out /tmp/s

DPO and ORPO are not in the table: they need preference pairs (chosen vs rejected
answers), which the docker-commands set does not have; tests/unit/test_training_methods.py
and tests/unit/test_jobs_dpo.py cover them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "dockerNLcommands.json"
LOCK = Path("/tmp/tuneserve-heavy.lock")
SUITE = "docker-commands"

# The LoRA learning rate: 1e-3, the project's tuned value for this data and model
# (training/configs/docker-lora.yaml; the LoRA paper's GPT-2 runs use 2e-4, small models and
# short runs take more). Variants that keep LoRA's weights keep its rate, as their papers do.
LORA_LR = 1e-3
# method -> (config keys besides the shared ones, learning rate). Why each rate:
METHODS: dict[str, tuple[dict[str, Any], float]] = {
    "lora": ({"adapter": "lora"}, LORA_LR),
    # QLoRA paper (Dettmers et al. 2023): the same rate as 16-bit LoRA (2e-4 for 7B/13B).
    "qlora": ({"adapter": "qlora"}, LORA_LR),
    # DoRA paper (Liu et al. 2024) trains with LoRA's hyper-parameters, rate included.
    "dora": ({"adapter": "lora", "use_dora": True}, LORA_LR),
    # rsLoRA paper (Kalajdzievski 2023) keeps the rate and changes the scaling (alpha/sqrt r).
    "rslora": ({"adapter": "lora", "use_rslora": True}, LORA_LR),
    # LoRA-FA paper (Zhang et al. 2023) uses LoRA's rates (A frozen, only B trained).
    "lora_fa": ({"adapter": "lora_fa"}, LORA_LR),
    # VeRA paper (Kopiczko et al. 2024), instruction tuning: 10x LoRA's rate (4e-3 vs 4e-4),
    # since only the scaling vectors train.
    "vera": ({"adapter": "vera"}, 10 * LORA_LR),
    # AdaLoRA paper (Zhang et al. 2023): LoRA-range rates (5e-4 to 1.2e-3 on GLUE).
    "adalora": ({"adapter": "adalora"}, LORA_LR),
    # IA3 (T-Few, Liu et al. 2022): 3e-3.
    "ia3": ({"adapter": "ia3"}, 3e-3),
    # Prompt tuning: PEFT's causal-LM prompt-tuning example uses 3e-2 with AdamW (Lester et
    # al. 2021 use 0.3 with Adafactor); initialised from a task text, as PEFT's example does.
    "prompt_tuning": (
        {"adapter": "prompt_tuning",
         "prompt_tuning": {"init_text": "Translate the request into one docker command:"}},
        3e-2,
    ),
    # Prefix tuning: PEFT's prefix-tuning examples use 1e-2 (no reparameterisation MLP).
    "prefix_tuning": ({"adapter": "prefix_tuning"}, 1e-2),
    # Full fine-tuning: 2e-5, the usual rate for every weight of a small LM (HF/TRL SFT
    # recipes use 1e-5 to 5e-5); 50x below LoRA.
    "full": ({"adapter": "full"}, 2e-5),
}
# Every method gets these: the docker-lora.yaml data, split, length and batch, and a
# constant rate after a short warm-up (the budget, not a step count, ends the run, so a
# decaying schedule would be cut at an arbitrary point).
SHARED: dict[str, Any] = {
    "base_model": "gemma-3-270m",
    "datasets": [{"path": str(DATA), "type": "alpaca"}],
    "val_set_size": 0.1,
    "seed": 42,
    "sequence_len": 128,
    "train_on_inputs": False,
    "micro_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "lr_scheduler": "constant_with_warmup",
    "warmup_steps": 5,
    "num_epochs": 1,
    "dtype": "float32",
    "logging_steps": 5,
    "save_steps": 100000,  # no checkpoints: the run ends on its budget
    "eval_max_rows": 8,  # the held-out loss the trainer logs; the harness scores the rest
    "overwrite": True,
}


def method_config(method: str, adapters_dir: Path) -> dict[str, Any]:
    """The training config (as the YAML mapping) for ``method``."""
    keys, lr = METHODS[method]
    return {**SHARED, **keys, "name": method, "output_dir": str(adapters_dir),
            "learning_rate": lr}


def cpu_seconds() -> float:
    """CPU time of this process (every thread) plus its waited-for children."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


class CpuBudget(TrainerCallback):
    """Stops training once the training loop has used ``budget_s`` CPU seconds (counted
    from ``on_train_begin``, so loading the model and data is not charged)."""

    def __init__(self, budget_s: float, clock=cpu_seconds) -> None:
        self.budget_s = budget_s
        self.clock = clock
        self.start: float | None = None
        self.used_s = 0.0
        self.wall_start = time.monotonic()
        self.wall_s = 0.0
        self.steps = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.clock()
        self.wall_start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        assert self.start is not None
        self.used_s = self.clock() - self.start
        self.wall_s = time.monotonic() - self.wall_start
        self.steps = state.global_step
        if self.used_s >= self.budget_s:
            control.should_training_stop = True


def child_train(config_path: Path, budget_s: float) -> None:
    """One method's training, as ``tuneserve train CONFIG`` runs it, plus the budget."""
    from training.config import load_config
    from training.manifest import read_manifest
    from training.sft import train

    config = load_config(config_path)
    budget = CpuBudget(budget_s)
    path = train(config, callbacks=[budget], progress_bar=False)
    manifest = read_manifest(path)
    print("RESULT " + json.dumps({
        "train_cpu_s": budget.used_s,
        "train_wall_s": budget.wall_s,
        "steps": manifest.get("steps"),
        "epochs": manifest.get("epochs"),
        "trained_tokens": manifest.get("trained_tokens"),
        "train_rows": (manifest.get("split") or {}).get("train_rows"),
        "trainable_parameters": manifest.get("trainable_parameters"),
        "total_parameters": manifest.get("total_parameters"),
        "train_loss": (manifest.get("metrics") or {}).get("train_loss"),
        "eval_loss": (manifest.get("metrics") or {}).get("eval_loss"),
        "adapter": str(path),
    }), flush=True)


@contextlib.contextmanager
def heavy_lock(enabled: bool = True):
    """The shared heavy-job lock (the same flock(2) lock ``flock /tmp/...`` takes)."""
    if not enabled:
        yield
        return
    with open(LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def train_one(method: str, out: Path, budget_s: float, lock: bool) -> dict[str, Any]:
    cfg_dir = out / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg_dir / f"{method}.yaml"
    cfg.write_text(yaml.safe_dump(method_config(method, out / "adapters"), sort_keys=False))
    log = out / "logs" / f"train-{method}.log"
    log.parent.mkdir(exist_ok=True)
    # The real TUNESERVE_HOME (where the base is prepared); output_dir keeps the adapter here.
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--child-train", str(cfg), "--cpu-budget-s", str(budget_s)]
    with heavy_lock(lock), open(log, "w") as fh:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time and peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
    text = log.read_text()
    line = next((x for x in text.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{method}: training failed (exit {proc.returncode}), see {log}:\n"
                         + text[-2000:])
    result = json.loads(line[len("RESULT "):])
    result.update(learning_rate=METHODS[method][1], process_cpu_s=usage.ru_utime + usage.ru_stime,
                  process_wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024)
    return result


# --- evaluation --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(out: Path, methods: list[str]):
    """``tuneserve serve`` on the real base, watching OUT/adapters (a full fine-tune is
    registered with POST /v1/adapters); yields (base URL, the
    /v1/models entries) once every method's adapter is listed."""
    import httpx

    from training.base_models import resolve_model_path

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = out / "logs" / "serve.log"
    env = {**os.environ, "TUNESERVE_HOME": str(out / "home"), "TUNESERVE_WATCH_INTERVAL_S": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tuneserve.cli", "serve",
           "--model", str(resolve_model_path("gemma-3-270m")),
           "--served-model-name", "gemma-3-270m", "--host", "127.0.0.1", "--port", str(port),
           "--adapters-dir", str(out / "adapters"), "--max-model-len", "1024",
           "--kv-cache-space", "1", "--max-lora-rank", "16"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        models: dict[str, dict] = {}
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"tuneserve serve exited ({proc.returncode}), see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    listed = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
                    models = {m["id"]: m for m in listed}
                    if all(m in models for m in methods):
                        break
                    if "full" in methods and "full" not in models:
                        # The watcher picks up adapter folders; a full fine-tune (a whole
                        # checkpoint) is registered through the API.
                        httpx.post(f"{url}/v1/adapters", timeout=300, json={
                            "name": "full", "path": str(out / "adapters" / "full")})
            time.sleep(2)
        else:
            raise SystemExit(f"server not ready with {methods} after 900 s, see {log}")
        yield f"{url}/v1", models
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _collect(suite, label: str, model_id: str, server: str, adapter: Path | None) -> dict:
    from evaluation.runner import RunOptions, collect

    opts = RunOptions(server=server, adapter_dirs={label: adapter} if adapter else {})
    return asyncio.run(collect(suite, [(label, model_id)], opts))


def _key(ex: dict) -> str:
    return json.dumps([ex["messages"], ex["reference"]], sort_keys=True)


def paired_record(base: dict, cand: dict) -> dict:
    """One harness record (base first) from the base's and a candidate's own collections,
    matched row by row on the conversation and reference (the candidate's rows decide)."""
    base_out = {_key(ex): ex["outputs"]["base"] for ex in base["examples"]}
    label = cand["models"][0]["label"]
    examples = []
    for ex in cand["examples"]:
        if _key(ex) not in base_out:
            raise SystemExit(f"held-out row {ex['index']} of {label} was not asked of the base")
        examples.append({**ex, "outputs": {"base": base_out[_key(ex)], label: ex["outputs"][label]}})
    return {**cand, "models": [base["models"][0], cand["models"][0]], "examples": examples}


def throughput(record: dict) -> dict[str, float]:
    tokens = sum(o.get("output_tokens") or 0 for ex in record["examples"]
                 for o in ex["outputs"].values())
    wall = record["generation_wall_s"]
    return {"output_tokens": tokens, "generation_wall_s": wall, "tokens_per_s": tokens / wall}


def evaluate(results: dict, out: Path, methods: list[str], eval_rows: int, lock: bool) -> None:
    from evaluation.runner import summarise
    from evaluation.suite import load_suite

    suite = load_suite(SUITE, {"perplexity": False, "judge": None,
                               "dataset": {"limit": eval_rows}})
    # The base sees the whole suite split, so every adapter's held-out rows are among them.
    base_suite = load_suite(SUITE, {"perplexity": False, "judge": None})
    warm = load_suite(SUITE, {"perplexity": False, "judge": None, "dataset": {"limit": 2}})
    with heavy_lock(lock), serve(out, methods) as (server, models):
        base_id = next(m for m in models.values() if not m.get("parent"))["id"]
        _collect(warm, "base", base_id, server, None)
        base = _collect(base_suite, "base", base_id, server, None)
        results["base"] = {"engine": "vllm", "concurrency": suite.concurrency,
                           **throughput(base)}
        for method in methods:
            adapter = out / "adapters" / method
            _collect(warm, method, method, server, adapter)  # loads it into its engine
            cand = _collect(suite, method, method, server, adapter)
            record = summarise(paired_record(base, cand))
            entry = results["methods"][method]
            entry["eval"] = {
                "engine": models[method]["adapter"]["engine"],  # as /v1/models says
                "served_method": models[method]["adapter"]["method"],
                "rows": len(record["examples"]),
                "split_source": record["dataset"]["split_source"],
                "metrics": {k: record["metrics"][k] for k in record["metrics"]},
                "comparison": {k: record["comparisons"][method][k]
                               for k in ("exact_match", "chrf")},
                **throughput(cand),
            }
            print(f"{method}: {entry['eval']['metrics'][method]['exact_match']:.3f} EM, "
                  f"{entry['eval']['tokens_per_s']:.1f} tokens/s ({entry['eval']['engine']})",
                  flush=True)
            save(results, out)


# --- results -----------------------------------------------------------------------------


def load_results(out: Path, budget: float, eval_rows: int) -> dict:
    path = out / "results.json"
    meta = {"cpu_budget_s": budget, "eval_rows": eval_rows}
    if not path.is_file():
        return {"meta": {**meta, "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                         "machine": machine()}, "methods": {}}
    results = json.loads(path.read_text())
    for key, value in meta.items():
        if results["meta"].get(key) != value:
            raise SystemExit(f"{path} was run with {key}={results['meta'].get(key)}, not "
                             f"{value}: use another --out to start a new result set")
    return results


def save(results: dict, out: Path) -> None:
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out / "results.json")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPU cores ({cpu}), shared with other jobs"


def _ci(comp: dict, scale: float) -> str:
    return (f"{comp['delta'] * scale:+.1f} [{comp['low'] * scale:+.1f}, "
            f"{comp['high'] * scale:+.1f}]")


def render(results: dict, command: str) -> str:
    meta = results["meta"]
    rows = next((m["train"].get("train_rows") for m in results["methods"].values()
                 if "train" in m), "?")
    lines = [
        f"`{command}` ({meta['started']}; {meta['machine']}). Gemma 3 270M, docker-commands "
        f"training rows ({rows}), batch 8, max length 128, seed 42; each method trains until "
        f"its training loop has used {meta['cpu_budget_s']:g} CPU seconds. Evaluation: "
        f"{meta['eval_rows']} held-out rows, greedy, through one `tuneserve serve`. "
        "Exact match (EM) in %, chrF 0-100; Δ = method − base with its 95% paired-bootstrap "
        "CI (2000 resamples).",
        "",
        "| method | engine | LR | trainable params | steps | train CPU s | train wall s "
        "| peak RSS MB | EM % | Δ EM [95% CI] | chrF | Δ chrF [95% CI] | tokens/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|",
    ]
    base = results.get("base")
    conc = (base or {}).get("concurrency", "?")
    first = next((m for m in results["methods"].values() if "eval" in m), None)
    if base and first:
        bm = first["eval"]["metrics"]["base"]
        lines.append(f"| base (no training) | vllm | – | 0 | 0 | – | – | – | "
                     f"{bm['exact_match'] * 100:.1f} | | {bm['chrf']:.1f} | | "
                     f"{base['tokens_per_s']:.1f} |")
    for name, entry in results["methods"].items():
        t, e = entry.get("train"), entry.get("eval")
        if not t:
            continue
        row = (f"| {name} | {e['engine'] if e else '?'} | {t['learning_rate']:g} | "
               f"{t['trainable_parameters']:,} | {t['steps']} | {t['train_cpu_s']:.0f} "
               f"({t['process_cpu_s']:.0f}) | {t['train_wall_s']:.0f} ({t['process_wall_s']:.0f}) "
               f"| {t['peak_rss_mb']:.0f} | ")
        if e:
            m, c = e["metrics"][name], e["comparison"]
            row += (f"{m['exact_match'] * 100:.1f} | {_ci(c['exact_match'], 100)} | "
                    f"{m['chrf']:.1f} | {_ci(c['chrf'], 1)} | {e['tokens_per_s']:.1f} |")
        else:
            row += "| | | | |"
        lines.append(row)
    lines += [
        "",
        "Train CPU s / wall s: the training loop's (the whole subprocess's, with model "
        "loading and saving, in brackets). Peak RSS: the training subprocess's. tokens/s: "
        f"generated tokens / wall for that model's rows alone ({conc} requests in flight; vLLM "
        "batches them, the PEFT engine answers one at a time).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-budget-s", type=float, default=120.0,
                        help="CPU seconds of training per method (default 120)")
    parser.add_argument("--eval-rows", type=int, default=60,
                        help="held-out rows per model (default 60)")
    parser.add_argument("--only", nargs="+", choices=list(METHODS), metavar="METHOD",
                        help=f"methods to run (default all: {' '.join(METHODS)})")
    parser.add_argument("--out", type=Path, default=Path("/tmp/methods-bench"),
                        help="results folder; a re-run resumes from OUT/results.json")
    parser.add_argument("--train-only", action="store_true", help="stop after training")
    parser.add_argument("--write", type=Path, metavar="MD",
                        help="put the table between the methods-bench markers of this file "
                        "(docs/training-methods.md)")
    parser.add_argument("--no-lock", action="store_true",
                        help=f"do not take {LOCK} around heavy steps")
    parser.add_argument("--one-lock", action="store_true",
                        help="take the heavy-job lock once for the whole run instead of once "
                        "per training and once for the evaluation (when the lock is busy)")
    parser.add_argument("--child-train", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cpu_budget_s <= 0 or args.eval_rows <= 0:
        parser.error("--cpu-budget-s and --eval-rows must be positive")
    if args.child_train:
        child_train(args.child_train, args.cpu_budget_s)
        return 0

    methods = args.only or list(METHODS)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(out, args.cpu_budget_s, args.eval_rows)
    trained = [m for m in methods
               if "train" in results["methods"].get(m, {}) and (out / "adapters" / m).is_dir()]
    pending = len(trained) < len(methods) or not args.train_only and (
        "base" not in results or any("eval" not in results["methods"][m] for m in methods))
    with heavy_lock(pending and args.one_lock and not args.no_lock):
        per_step_lock = not (args.no_lock or args.one_lock)
        run(args, methods, out, results, per_step_lock)
    command = ("python bench/methods_bench.py --cpu-budget-s "
               f"{args.cpu_budget_s:g} --eval-rows {args.eval_rows} --out {args.out}"
               + (f" --only {' '.join(args.only)}" if args.only else "")
               + (" --one-lock" if args.one_lock else ""))
    table = render(results, command)
    (out / "table.md").write_text(table + "\n")
    print(table)
    if args.write:
        write_section(args.write, table)
    return 0


def run(args: argparse.Namespace, methods: list[str], out: Path, results: dict,
        lock: bool) -> None:
    """Train what is not trained yet, then evaluate (resuming from ``results``)."""
    for method in methods:
        entry = results["methods"].setdefault(method, {})
        if "train" in entry and (out / "adapters" / method).is_dir():
            continue  # resumed
        print(f"training {method} …", flush=True)
        entry["train"] = train_one(method, out, args.cpu_budget_s, lock)
        entry.pop("eval", None)  # a new adapter needs a new evaluation
        print(f"{method}: {entry['train']}", flush=True)
        save(results, out)
    if not args.train_only:
        todo = [m for m in methods if "eval" not in results["methods"][m]]
        if todo or "base" not in results:
            # One server for every method: a resumed evaluation re-asks them all.
            evaluate(results, out, methods, args.eval_rows, lock)
            save(results, out)


START, END = "<!-- methods-bench:start -->", "<!-- methods-bench:end -->"


def write_section(path: Path, table: str) -> None:
    """Replace what is between the markers (the file must have them)."""
    text = path.read_text()
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise SystemExit(f"{path} has no {START} ... {END} markers")
    path.write_text(f"{head}{START}\n{table}\n{END}{tail}")


if __name__ == "__main__":
    sys.exit(main())
