"""Kill a real `tuneserve train` subprocess mid-run, resume it from its checkpoint;
SIGTERM stops a run (its own last log line says so) and leaves no adapter (tiny model, real CLI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, tiny_model_dir: Path, max_steps: int) -> Path:
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "instruction": "translate",
                    "input": f"list containers number {i}",
                    "output": "docker ps",
                }
            )
            + "\n"
            for i in range(64)
        )
    )
    path = tmp_path / "c.yaml"
    path.write_text(
        f"base_model: {tiny_model_dir}\nname: res\noutput_dir: {tmp_path / 'out'}\n"
        f"datasets: [{{path: {data}}}]\nmax_steps: {max_steps}\nmicro_batch_size: 2\n"
        "save_steps: 5\nlogging_steps: 1\nlearning_rate: 5.0e-3\n"
    )
    return path


def _start(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tuneserve.cli", "train", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"train exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the training run")
        time.sleep(0.2)


def _checkpoint_steps(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name.removeprefix("checkpoint-"))
        for p in folder.glob("checkpoint-*")
        if (p / "trainer_state.json").is_file()
    )


def test_killed_run_resumes_from_checkpoint(tmp_path, tiny_model_dir):
    # The first run cannot finish before it is killed (CI once trained all of a short run
    # between two polls); the resumed one is told to stop 10 steps past its checkpoint.
    config = _config(tmp_path, tiny_model_dir, max_steps=100000)
    checkpoints = tmp_path / "out" / ".checkpoints" / "res"
    proc = _start(config)
    _wait_for(lambda: bool(_checkpoint_steps(checkpoints)), proc)
    proc.send_signal(signal.SIGKILL)  # a hard kill: no handler runs, nothing is cleaned up
    proc.wait(timeout=30)
    assert not (tmp_path / "out" / "res").exists()
    last_checkpoint = _checkpoint_steps(checkpoints)[-1]
    total_steps = last_checkpoint + 10

    resumed = _start(
        config, "--set", "resume_from_checkpoint=true", "--set", f"max_steps={total_steps}"
    )
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "adapter res written to" in out
    manifest = json.loads((tmp_path / "out" / "res" / "tuneserve.json").read_text())
    assert manifest["resumed_from"].endswith(f"checkpoint-{last_checkpoint}")
    assert manifest["steps"] == total_steps
    events = [
        json.loads(x) for x in (tmp_path / "out" / "res.train.jsonl").read_text().splitlines()
    ]
    assert any("resuming from" in e.get("message", "") for e in events)
    # The resumed run continued the step count instead of starting over.
    last_start = max(i for i, e in enumerate(events) if "resuming from" in e.get("message", ""))
    resumed_steps = [e["step"] for e in events[last_start:] if e["type"] == "progress"]
    assert resumed_steps and resumed_steps[0] > last_checkpoint


def test_sigterm_stops_the_run_and_leaves_no_adapter(tmp_path, tiny_model_dir):
    config = _config(tmp_path, tiny_model_dir, max_steps=100000)
    log = tmp_path / "out" / "res.train.jsonl"
    proc = _start(config)
    _wait_for(lambda: log.is_file() and '"progress"' in log.read_text(), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)  # a bound for a hung run, not a measurement
    assert proc.returncode != 0
    assert "cancelled" in err and "no adapter written" in err
    assert "Traceback" not in err
    out_dir = tmp_path / "out"
    assert not (out_dir / "res").exists()
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".res")]
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["type"] == "error" and "SIGTERM" in last["message"]
