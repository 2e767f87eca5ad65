#!/usr/bin/env bash
# The GPU measurements in docs/perf/, as run on the device machine (2 x H100) in one call:
#   source .carry/env.sh && OUT=docs/perf bash benchmarks/gpu_suite.sh
# Each step is bounded by a timeout so one slow step cannot starve the others; each prints one JSON line.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 TQDM_DISABLE=1
out="${OUT:-docs/perf}"
mkdir -p "$out"
nvidia-smi -L
step() { echo "== $*"; "$@" 2>&1 | grep -E '^\{|Error|error|Traceback' | tail -5; }
step env CUDA_VISIBLE_DEVICES=0 timeout 200 python3 -m benchmarks.extract --device cuda --scenes 3 --frames 100 \
  --out "$out/extract-h100.json"
step env CUDA_VISIBLE_DEVICES=0 timeout 100 python3 -m benchmarks.extract_multigpu --gpus 1 --work /tmp/multigpu \
  --scenes 6 --out "$out/extract-multigpu-h100.jsonl"
step env CUDA_VISIBLE_DEVICES=0,1 timeout 80 python3 -m benchmarks.extract_multigpu --gpus 2 --work /tmp/multigpu \
  --scenes 6 --out "$out/extract-multigpu-h100.jsonl"
step env CUDA_VISIBLE_DEVICES=0 timeout 100 python3 benchmarks/capability.py --device cuda --dtype float16 --steps 50 \
  --batch 4 --out "$out"
