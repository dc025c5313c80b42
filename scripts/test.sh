#!/usr/bin/env bash
# The full suite, slow tests included (what CI runs). Prepares the real base model first
# (a no-op when already prepared) so its cost shows up once, with progress, not inside a test.
set -euo pipefail
cd "$(dirname "$0")/.."
export TUNESERVE_HOME=${TUNESERVE_HOME:-$HOME/.cache/tuneserve}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/tuneserve models prepare gemma-3-270m
exec .venv/bin/python -m pytest -q --durations=25 "$@"
