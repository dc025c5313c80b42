"""The CPU training Job's command, run for real (slow).

Renders deploy/training/overlays/cpu with kustomize, takes the container's args exactly as
Kubernetes would expand them, maps the image paths onto this checkout and the volume onto a
temp $TUNESERVE_HOME, swaps in the tiny model and a small dataset, and runs
``accelerate launch ... -m tuneserve.cli train ...``: the adapter must land in
$TUNESERVE_HOME/adapters, where the server replicas pick adapters up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROWS = [
    ("List all running containers.", "docker ps"),
    ("Show every container, stopped ones too.", "docker ps -a"),
    ("List the images.", "docker images"),
    ("Stop the container named web.", "docker stop web"),
]


def _render(root: Path) -> list[dict]:
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
    done = subprocess.run(
        [kubectl, "kustomize", str(root)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.slow
def test_cpu_training_job_command_trains_an_adapter_onto_the_volume(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    objects = _render(REPO / "deploy" / "training" / "overlays" / "cpu")
    job = next(o for o in objects if o["kind"] == "Job")
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}

    volume = tmp_path / "volume"
    config_dir = tmp_path / "train-config"
    config_dir.mkdir()
    data = volume / "datasets" / "docker.jsonl"
    data.parent.mkdir(parents=True)
    with data.open("w") as fh:
        for i in range(3):
            for request, command in ROWS:
                fh.write(json.dumps({"instruction": f"{request} ({i})", "output": command}) + "\n")
    # The shipped config, with the base and data a CPU test can afford.
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    config.update(
        base_model=str(tiny_model_dir),
        datasets=[{"path": str(data), "type": "alpaca"}],
        val_set_size=0,
        max_steps=2,
        micro_batch_size=4,
        sequence_len=96,
        save_steps=1,
    )
    (config_dir / "config.yaml").write_text(yaml.safe_dump(config))

    def to_local(arg: str) -> str:
        arg = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg)
        for prefix, local in (
            (mounts["train-config"], config_dir),
            (mounts["data"], volume),
            ("/app", REPO),
        ):
            if arg.startswith(prefix + "/"):
                return str(local / arg[len(prefix) + 1 :])
        return arg

    argv = [to_local(a) for a in container["args"]]
    assert argv[:2] == ["accelerate", "launch"]
    argv[0] = str(Path(sys.executable).parent / "accelerate")
    run_env = {
        **os.environ,
        **env,
        "TUNESERVE_HOME": str(volume),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    done = subprocess.run(argv, cwd=REPO, env=run_env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    adapter = volume / "adapters" / config["name"]
    assert (adapter / "adapter_model.safetensors").is_file(), list(volume.rglob("*"))
    assert (adapter / "adapter_config.json").is_file()
    manifest = json.loads((adapter / "tuneserve.json").read_text())
    # The Job's `--set dtype=$(TRAIN_DTYPE)` override reached the run (and its manifest).
    assert manifest["config"]["dtype"] == env["TRAIN_DTYPE"]
    assert manifest["config"]["resume_from_checkpoint"] is True
