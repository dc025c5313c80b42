"""Two-process DDP training of the real Gemma on CPU (gloo), next to a one-process run with
the same global batch (two micro-batches of one row per step): ``accelerate launch --num_processes 2`` of the real CLI.

- one adapter folder, one manifest, one event log; the output trees are the same;
- rank 1 writes nothing of its own: every file it creates, writes, renames or removes
  (Python audit hooks, tests/integration/ddp_probe.py) lies in the Trainer's checkpoint
  scratch folder, which rank 0 removes;
- the loss curve (relative 1e-3 per step) and the adapter weights (relative 1e-3 over all
  LoRA tensors) match the one-process run: dropout off, float32, the same seeded row
  order, so the runs differ only in reduction order;
- the adapter loads onto the base model with PEFT and answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("ddp_probe.py")
STEPS = 3
LOSS_RTOL = 1e-3  # per logged step, 2-process vs 1-process
# All LoRA tensors together, |two - one| / |one|: Adam's first steps move each weight by
# about lr * sign(gradient), so single near-zero gradient entries may differ elementwise.
WEIGHT_RTOL = 1e-3
COMMANDS = [
    ("List all running containers.", "docker ps"),
    ("Show every container, stopped ones too.", "docker ps -a"),
    ("Stop the container named web.", "docker stop web"),
    ("Remove the image nginx.", "docker rmi nginx"),
    ("Show the logs of the container api.", "docker logs api"),
    ("Pull the image redis.", "docker pull redis"),
    ("List all images.", "docker images"),
    ("Start the container named db.", "docker start db"),
]


def _write_run(root: Path, model_dir: Path, *, accumulation: int) -> Path:
    root.mkdir()
    data = root / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": "Give the docker command.", "input": q, "output": a})
            + "\n"
            for q, a in COMMANDS
        )
    )
    config = root / "config.yaml"
    config.write_text(
        f"base_model: {model_dir}\nname: ddp\noutput_dir: {root / 'out'}\n"
        f"datasets: [{{path: {data}}}]\nval_set_size: 0\nmax_steps: {STEPS}\n"
        f"micro_batch_size: 1\ngradient_accumulation_steps: {accumulation}\n"
        "sequence_len: 64\nlogging_steps: 1\nlearning_rate: 1.0e-3\nlora_dropout: 0.0\n"
        "save_steps: 1000\nseed: 7\n"
    )
    return config


def _run(cmd: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if ".partial-" not in p.name}


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "ddp.train.jsonl").read_text().splitlines()]


def _lora(adapter: Path):
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def runs(real_model_dir, tmp_path_factory):
    """(one-process output, two-process output, per-rank writes of the two-process run)."""
    base = tmp_path_factory.mktemp("ddp")
    one = _write_run(base / "one", real_model_dir, accumulation=2)
    _run([sys.executable, "-m", "tuneserve.cli", "train", str(one)], threads=2)

    two = _write_run(base / "two", real_model_dir, accumulation=1)
    probe_out = base / "probe"
    probe_out.mkdir()
    os.environ["DDP_PROBE_ROOT"] = str(base / "two")
    os.environ["DDP_PROBE_OUT"] = str(probe_out)
    try:
        _run(
            [
                sys.executable, "-m", "accelerate.commands.launch",
                "--config_file", str(REPO / "training/accelerate/cpu-ddp.yaml"),
                "--num_processes", "2", "--main_process_port", str(_free_port()),
                str(PROBE), "train", str(two),
            ],
            threads=1,
        )
    finally:
        del os.environ["DDP_PROBE_ROOT"], os.environ["DDP_PROBE_OUT"]
    writes = {r: json.loads((probe_out / f"rank-{r}.json").read_text()) for r in (0, 1)}
    return base / "one" / "out", base / "two" / "out", writes


def test_one_adapter_one_manifest_one_log(runs):
    one, two, _ = runs
    assert [p.name for p in two.iterdir() if p.is_dir() and not p.name.startswith(".")] == ["ddp"]
    assert len(list(two.rglob("tuneserve.json"))) == 1
    assert not list(two.rglob("checkpoint-*"))  # rank 0 removed the scratch checkpoints
    assert _tree(two) == _tree(one)
    events = _events(two)  # two writers would duplicate every line
    assert [e["type"] for e in events].count("done") == 1
    assert sum(e["message"].startswith("starting") for e in events if e["type"] == "status") == 1
    assert [e["step"] for e in events if e["type"] == "progress"] == list(range(1, STEPS + 1))
    manifest = json.loads((two / "ddp" / "tuneserve.json").read_text())
    assert manifest["steps"] == STEPS


def test_only_rank_zero_writes(runs):
    _, two, writes = runs
    published = str((two / "ddp").resolve())
    # The hook works: rank 0's record holds the adapter's publishing rename and the log.
    assert any(e == "os.rename" and p == published for e, p in writes[0])
    assert any(p.endswith("ddp.train.jsonl") for _, p in writes[0])
    scratch = str((two / ".checkpoints" / "ddp").resolve())
    stray = [(e, p) for e, p in writes[1] if not p.startswith(scratch)]
    assert stray == [], stray


def test_loss_curve_and_adapter_match_one_process(runs):
    import torch

    one, two, _ = runs
    curve = {name: [e["loss"] for e in _events(out) if e["type"] == "progress"]
             for name, out in (("one", one), ("two", two))}
    assert len(curve["one"]) == len(curve["two"]) == STEPS
    for step, (a, b) in enumerate(zip(curve["one"], curve["two"], strict=True), 1):
        assert b == pytest.approx(a, rel=LOSS_RTOL), (step, curve)
    ref, got = _lora(one / "ddp"), _lora(two / "ddp")
    assert ref.keys() == got.keys() and ref
    # Training moved the adapter (LoRA B starts at zero), so the match means something.
    assert all(ref[k].abs().sum() > 0 for k in ref if "lora_B" in k)
    a = torch.cat([ref[k].flatten() for k in sorted(ref)])
    b = torch.cat([got[k].flatten() for k in sorted(ref)])
    assert float((b - a).norm() / a.norm()) < WEIGHT_RTOL

def test_adapter_loads_and_answers(runs, real_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, two, _ = runs
    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    base = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, two / "ddp")
    assert any("lora_A" in n for n, _ in model.named_parameters())
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Give the docker command.\n\nList all images."}],
        tokenize=False, add_generation_prompt=True,
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.strip()
