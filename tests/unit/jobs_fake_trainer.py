"""A stand-in for ``tuneserve train`` that speaks contract #1 (config, --log-file, JSON-lines
events, checkpoints, SIGTERM = stop with no adapter) without a model, so the supervisor's
queue/cancel/resume logic is unit-tested in milliseconds. Behaviour via env:
FAKE_TRAIN_STEP_S (seconds per step), FAKE_TRAIN_FAIL_AT (step that errors out),
FAKE_TRAIN_ARGV_FILE (where to write its argv as JSON), FAKE_TRAIN_ADAPTER_FROM (a real
adapter folder to write as the result, so the served app can load it; default: a
placeholder). Launcher flags written as ``--flag=value`` may come before the config."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import yaml


def main() -> int:
    if os.environ.get("FAKE_TRAIN_ARGV_FILE"):
        Path(os.environ["FAKE_TRAIN_ARGV_FILE"]).write_text(json.dumps(sys.argv[1:]))
    config_path = Path(next(a for a in sys.argv[1:] if not a.startswith("--")))
    log_file = Path(sys.argv[sys.argv.index("--log-file") + 1])
    config = yaml.safe_load(config_path.read_text())
    out = Path(config["output_dir"])
    ckpts = out / ".checkpoints" / config["name"]
    total = int(config.get("max_steps") or 6)
    step_s = float(os.environ.get("FAKE_TRAIN_STEP_S", "0.05"))
    fail_at = int(os.environ.get("FAKE_TRAIN_FAIL_AT", "0"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def emit(**event):
        with log_file.open("a") as fh:
            fh.write(json.dumps({"time": "t", **event}) + "\n")

    start = 0
    if config.get("resume_from_checkpoint") and ckpts.is_dir():
        start = max(int(p.name.split("-")[1]) for p in ckpts.iterdir())
        emit(type="status", message=f"resumed from step {start}")
    emit(type="status", message="training started", total_steps=total)
    for step in range(start + 1, total + 1):
        time.sleep(step_s)
        if step == fail_at:
            emit(type="error", message=f"boom at step {step}")
            return 1
        emit(type="progress", step=step, total_steps=total, loss=2.0 / step,
             trained_tokens=step * 100)
        if step % int(config.get("save_steps", 50)) == 0:
            ck = ckpts / f"checkpoint-{step}"
            ck.mkdir(parents=True, exist_ok=True)
            (ck / "trainer_state.json").write_text("{}")
    # As training/sft.py does: the held-out loss is measured once more after the last step.
    emit(type="status", message="evaluating held-out loss")
    emit(type="eval", step=total, total_steps=total, eval_loss=1.5)
    adapter = out / config["name"]
    if os.environ.get("FAKE_TRAIN_ADAPTER_FROM"):
        shutil.copytree(os.environ["FAKE_TRAIN_ADAPTER_FROM"], adapter, dirs_exist_ok=True)
    else:
        adapter.mkdir(parents=True, exist_ok=True)
        (adapter / "adapter_config.json").write_text("{}")
    emit(type="done", trained_tokens=total * 100, message="done")
    print(f"adapter written to {adapter}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
