#!/usr/bin/env bash
# `make run`: serve the prepared base model with its adapters (API + UI) on $HOST:$PORT.
# The Dockerfile's CMD runs this same script, so local and container runs start identically.
set -euo pipefail
cd "$(dirname "$0")/.."
export TUNESERVE_HOME=${TUNESERVE_HOME:-$HOME/.cache/tuneserve}
BIN=${TUNESERVE_BIN:-.venv/bin}
BASE_MODEL=${BASE_MODEL:-gemma-3-270m}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}

"$BIN/tuneserve" models prepare "$BASE_MODEL"
# First run: with no adapter yet, queue a CPU-sized demo fine-tuning job on the docker
# data; its adapter is served as soon as it finishes (progress in the log and the UI).
export TUNESERVE_JOBS_DEMO_JOB_IF_NO_ADAPTERS=${TUNESERVE_JOBS_DEMO_JOB_IF_NO_ADAPTERS:-1}
exec "$BIN/tuneserve" serve --model "$BASE_MODEL" --host "$HOST" --port "$PORT" \
  --adapters-dir "$TUNESERVE_HOME/adapters" "$@"
