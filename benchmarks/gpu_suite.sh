#!/usr/bin/env bash
# The GPU measurements in docs/perf/, as run on the device machine (2 x H100), one part per call:
#   source .carry/env.sh && OUT=$OUT bash benchmarks/gpu_suite.sh extract   # carry .carry/base.tar.xz
#   source .carry/env.sh && OUT=$OUT bash benchmarks/gpu_suite.sh models [steps of gpu_fast_suite.sh]
#   source .carry/env.sh && OUT=$OUT bash benchmarks/gpu_suite.sh distill   # carry .carry/spconv.tar.xz
# Each step is bounded by a timeout so one slow step cannot starve the others; each prints JSON lines.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 TQDM_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
out="${OUT:-docs/perf}"
mkdir -p "$out"
nvidia-smi -L
step() { echo "== $*"; "$@" 2>&1 | grep -E '^\{|Error|error|Traceback' | tail -8; }
one=(env CUDA_VISIBLE_DEVICES=0)
case "${1:-}" in
  extract)
    step "${one[@]}" timeout 190 python3 -m benchmarks.extract --device cuda --scenes 2 --frames 100 \
      --out "$out/extract-h100.json"
    step "${one[@]}" timeout 180 python3 -m benchmarks.extract_multigpu --gpus 1 --work /tmp/multigpu \
      --scenes 8 --out "$out/extract-multigpu-h100.jsonl"
    step env CUDA_VISIBLE_DEVICES=0,1 timeout 140 python3 -m benchmarks.extract_multigpu --gpus 2 --work /tmp/multigpu \
      --scenes 8 --out "$out/extract-multigpu-h100.jsonl"
    ;;
  models)
    OUT="$out" bash benchmarks/gpu_fast_suite.sh "${@:2}"  # SAM encoder and SD generation fast paths vs eager
    ;;
  distill)
    step "${one[@]}" timeout 150 python3 benchmarks/distill.py --device cuda --backend spconv --points 150000 \
      --batch 8 --steps 6 --warmup 2 --out "$out/distill.jsonl"
    step env CUDA_VISIBLE_DEVICES=0,1 timeout 300 python3 -m benchmarks.distill_multigpu --gpus 1 2 --points 150000 \
      --global-batch 8 --steps 8 --warmup 3 --out "$out/distill-multigpu-h100.jsonl"
    step env CUDA_VISIBLE_DEVICES=0,1 timeout 150 python3 -m benchmarks.distill_elastic --gpus 2 --work /tmp/elastic \
      --out "$out/distill-elastic-h100.jsonl"
    ;;
  *)
    echo "usage: gpu_suite.sh extract|models|distill" >&2
    exit 2
    ;;
esac
