#!/usr/bin/env bash
# Container entrypoint: lay out $TUNESERVE_HOME, make sure the base model is there, then exec
# the command (default: scripts/run.sh, the `make run` entry point).
#  1. Split state (several replicas on one shared volume): with TUNESERVE_SHARED_HOME set,
#     TUNESERVE_HOME is per-pod local disk and the shared folders (TUNESERVE_SHARED_ITEMS,
#     default: adapters models reports datasets) are links into the shared volume. The
#     SQLite files (adapter registry, job store) then stay per pod, never shared over the
#     network file system, while every replica sees the same adapters.
#  2. Models prepared at image build time sit in $TUNESERVE_SEED_HOME/models; link each one
#     into $TUNESERVE_HOME/models unless it is already there (a mounted volume hides
#     whatever the image had at that path).
#  3. TUNESERVE_PREPARE_ON_START=1 (default) runs `tuneserve models prepare $BASE_MODEL`,
#     a no-op for a linked or already prepared model, otherwise it builds it on the volume.
#     Commands other than the server (training Jobs) need the model too, so this is here
#     and not only in scripts/run.sh.
set -euo pipefail
home=${TUNESERVE_HOME:?TUNESERVE_HOME must be set}
shared=${TUNESERVE_SHARED_HOME:-}
seed=${TUNESERVE_SEED_HOME:-/opt/tuneserve-seed}
mkdir -p "$home"
if [ -n "$shared" ] && [ "$shared" != "$home" ]; then
  for item in ${TUNESERVE_SHARED_ITEMS:-adapters models reports datasets}; do
    mkdir -p "$shared/$item"
    [ -e "$home/$item" ] || ln -s "$shared/$item" "$home/$item"
  done
fi
mkdir -p "$home/models"
if [ -d "$seed/models" ]; then
  for prepared in "$seed"/models/*/; do
    [ -d "$prepared" ] || continue
    name=$(basename "$prepared")
    # ln fails when another replica on the same shared volume won the race: that is fine.
    [ -e "$home/models/$name" ] || ln -s "${prepared%/}" "$home/models/$name" 2>/dev/null || true
  done
fi
if [ "${TUNESERVE_PREPARE_ON_START:-1}" = "1" ]; then
  model=${BASE_MODEL:-gemma-3-270m}
  # A folder path is served as is; only registered names need preparing.
  if [ ! -d "$model" ]; then
    tuneserve models prepare "$model"
  fi
fi
exec "$@"
