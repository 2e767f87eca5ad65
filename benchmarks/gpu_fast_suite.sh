#!/usr/bin/env bash
# Issue #12 fast paths against eager on one GPU: SAM ViT-H encoder and SD1.5 generation with capture. Each step is
# one process measuring eager and its variants side by side, bounded by a timeout; its JSON lines are appended to
# $OUT/fast-paths.jsonl. Steps run in the order given (default: sam sam-compiled sd, under 8 min); the others each
# fit a second call: sd-compiled (default and CUDA-graph compile), sam-batch1 (SamRefiner's batch), *-autotune;
# dense (openclip-dense ViT-L-14 teacher: eager vs fast, fast+cudnn, fast compiled; under 3 min) and dense-compiled.
#   source .carry/env.sh && OUT=docs/perf bash benchmarks/gpu_fast_suite.sh [sam sam-compiled sd | sd-compiled ...]
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 TQDM_DISABLE=1 CUDA_VISIBLE_DEVICES=0
out="${OUT:-docs/perf}"
mkdir -p "$out"
log="$out/fast-paths.jsonl"
nvidia-smi -L
step() { echo "== $*"; "$@" 2>&1 | tee >(grep -E '^\{' >> "$log") | grep -E '^\{|Error|error|Traceback|cudagraph|recompil' | tail -8; }
sam="python3 -m benchmarks.sam_fast --device cuda --dtype float16 --batch 8 --iters 10"
dense="python3 -m benchmarks.dense_fast --device cuda --dtype float16 --batch 8 --iters 10"
sd="python3 -m benchmarks.sd_fast --device cuda --dtype float16 --batch 4 --steps 50 --iters 2"
for part in ${*:-sam sam-compiled sd}; do
  case "$part" in
    sam) step timeout 90 $sam --variants mask,fold ;;
    sam-compiled) step timeout 200 $sam --variants mask:default,fold:default ;;
    sam-fold) step timeout 170 $sam --variants fold,fold:default ;;
    sd-graphs) step timeout 260 $sd --variants fast,fast+cl:reduce-overhead ;;
    sam-autotune) step timeout 300 $sam --variants fold:max-autotune ;;
    sam-batch1) step timeout 200 $sam --batch 1 --iters 20 --variants mask,fold,fold:reduce-overhead ;;
    dense) step timeout 180 $dense --variants fast,fast+cudnn,fast:default ;;
    dense-compiled) step timeout 420 $dense --variants fast+cudnn:default,fast:max-autotune-no-cudagraphs ;;
    sd) step timeout 170 $sd --variants fast,fast+cl ;;
    sd-compiled) step timeout 320 $sd --variants fast+cl:default,fast+cl:reduce-overhead ;;
    sd-autotune) step timeout 420 $sd --variants fast+cl:max-autotune ;;
    *) echo "unknown step $part" ;;
  esac
done
