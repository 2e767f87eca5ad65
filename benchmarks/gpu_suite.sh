#!/usr/bin/env bash
# The GPU measurements in docs/perf/, as run on the device machine (2 x H100), one part per call:
#   source .carry/env.sh && OUT=$OUT bash benchmarks/gpu_suite.sh extract   # carry .carry/base.tar.xz
#   source .carry/env.sh && OUT=$OUT bash benchmarks/gpu_suite.sh mask      # base (+ alt.tar.xz: SAM 2, ...);
#     ~6 min on an H100; VARIANTS=... picks the sam_clip variants
#   source .carry/env.sh && OUT=$OUT [SCENES=80 WAIT=560] bash benchmarks/gpu_suite.sh extract-long  # base; ~7 min
#     at SCENES=24 (16 took 5.4 min on an H100 in session 9); longer runs span calls (call it again to wait on)
#   source .carry/env.sh && OUT=$OUT bash benchmarks/gpu_suite.sh models [steps of gpu_fast_suite.sh]
#   source .carry/env.sh && OUT=$OUT bash benchmarks/gpu_suite.sh distill   # carry .carry/spconv.tar.xz
#   source .carry/env.sh && OUT=$OUT bash benchmarks/gpu_suite.sh profile   # carry .carry/spconv.tar.xz (~5 min)
#   source .carry/env.sh && OUT=$OUT bash benchmarks/gpu_suite.sh loader    # carry .carry/spconv.tar.xz (~8 min)
#   source .carry/env.sh && OUT=$OUT bash benchmarks/gpu_suite.sh study     # carry .carry/spconv.tar.xz (> 9.5 min
#     on an H100 in sessions 8 and 10: cut off after the students (session 10: in predict, then on the CPU); a second
#     `study` call resumes it (session 10: 8.8 min, 490 s of it predict on the CPU, on the GPU since)
#   source .carry/env.sh && OUT=$OUT bash benchmarks/gpu_suite.sh study-oracle  # next call, same machine (~3 min)
#   source .carry/env.sh && OUT=$OUT bash benchmarks/gpu_suite.sh oracle  # the oracle row alone; carry spconv
# On a 4-GPU host (nvidia-h100-x4 or h200-x4), the 1/2/4-GPU scaling points of one machine:
#   source .carry/env.sh && OUT=$OUT bash benchmarks/gpu_suite.sh extract4  # carry .carry/base.tar.xz
#   source .carry/env.sh && OUT=$OUT bash benchmarks/gpu_suite.sh distill4  # carry .carry/spconv.tar.xz
# Each step is bounded by a timeout so one slow step cannot starve the others; each prints JSON lines.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 TQDM_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
out="${OUT:-docs/perf}"
mkdir -p "$out"
nvidia-smi -L
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -oE 'H[0-9]+' | tr A-Z a-z)
step() { echo "== $*"; "$@" 2>&1 | grep -E '^\{|Error|error|Traceback' | tail -8; }
build_segmentator() { python3 setup.py build_ext --inplace 2>&1 | tail -1; }  # superpoints' C++ (not carried)
one=(env CUDA_VISIBLE_DEVICES=0)
case "${1:-}" in
  extract)
    step "${one[@]}" timeout 320 python3 -m benchmarks.extract --device cuda --teachers openclip-dense,sam-clip \
      --scenes 10 --frames 100 --out "$out/extract-sas-pair-h100.json"
    step "${one[@]}" timeout 180 python3 -m benchmarks.extract_multigpu --gpus 1 --work /tmp/multigpu \
      --scenes 8 --out "$out/extract-multigpu-h100.jsonl"
    step env CUDA_VISIBLE_DEVICES=0,1 timeout 140 python3 -m benchmarks.extract_multigpu --gpus 2 --work /tmp/multigpu \
      --scenes 8 --out "$out/extract-multigpu-h100.jsonl"
    ;;
  extract-long)  # issue #21: the SAS pair end to end on SCENES x 100 frames (start-up ~49 s on an H100). Detached
    # (setsid) so that a run longer than one call goes on while the machine stays warm: the first call starts it,
    # every call waits up to WAIT s for it and brings back its JSON line once written (and the log so far)
    run=/tmp/extract-long
    if [ ! -d $run ]; then
      mkdir -p $run/repo && tar --exclude=./.carry -cf - . | tar -xf - -C $run/repo
      (cd $run/repo && setsid sh -c 'echo $$ > ../pid; exec "$@"' sh env CUDA_VISIBLE_DEVICES=0 timeout 1700 \
        python3 -m benchmarks.extract --device cuda --teachers openclip-dense,sam-clip --scenes "${SCENES:-24}" \
        --frames 100 --out $run/result.json > $run/log 2>&1 < /dev/null &)
      sleep 2
    fi
    alive() { grep -qs '^State:[[:space:]]*[^Z[:space:]]' "/proc/$(cat $run/pid)/status"; }  # not a zombie
    for ((waited = 0; waited < ${WAIT:-560}; waited += 10)); do
      alive || break
      sleep 10
    done
    cp $run/log "$out/extract-long.log"
    alive && echo "extract-long still running after ${SECONDS} s"
    [ -s $run/result.json ] && cp $run/result.json "$out/extract-sas-pair-long-$card.json" && cat $run/result.json
    grep -E 'Error|Traceback' $run/log | tail -5
    ;;
  mask)  # the mask teacher: stock vs device paths (ALT_FRAMES=2 and .carry/alt.tar.xz: the alternatives too)
    step "${one[@]}" timeout 100 python3 -m benchmarks.sam_decoder_kernels --out "$out/sam-decoder-kernels-$card.jsonl"
    step "${one[@]}" timeout 470 python3 -m benchmarks.sam_clip --device cuda --dtype float16 --masks 100 \
      --candidates 400 --frames 16 --stock-frames 1 --alt-frames "${ALT_FRAMES:-0}" --breakdown --sizes "${SIZES:-scannet,nuscenes}" \
      --variants "${VARIANTS:-device-fast,device-fast-no-triton,device-fast-compiled-encoder,device-fast-pool}" \
      --out "$out/sam-clip-$card.jsonl"
    ;;
  extract4)
    for gpus in 0 0,1 0,1,2,3; do
      n=$(( (${#gpus} + 1) / 2 ))
      step env CUDA_VISIBLE_DEVICES=$gpus timeout 200 python3 -m benchmarks.extract_multigpu --gpus $n \
        --work /tmp/multigpu4 --scenes 16 --out "$out/extract-multigpu-4xh200.jsonl"
    done
    ;;
  distill4)
    step env CUDA_VISIBLE_DEVICES=0,1,2,3 timeout 420 python3 -m benchmarks.distill_multigpu --gpus 1 2 4 \
      --points 150000 --global-batch 8 --steps 8 --warmup 3 --out "$out/distill-multigpu-4xh200.jsonl"
    step env CUDA_VISIBLE_DEVICES=0,1,2,3 timeout 150 python3 -m benchmarks.distill_elastic --gpus 4 \
      --work /tmp/elastic --out "$out/distill-elastic-4xh200.jsonl"
    ;;
  profile)  # where the time goes per stage (issue #12): $out/profile-stages.jsonl, tables in $out/profile-stages.md
    log="$out/profile-stages.jsonl"
    : > "$log"
    prof() {  # one process per stage group, bounded; SD last (its ~80 s reduce-overhead compile)
      echo "== profile_stages $1 (timeout $2 s)"
      "${one[@]}" timeout "$2" python3 -m benchmarks.profile_stages --device cuda --stages "$1" --out "$log" 2>&1 \
        | grep -E '^\[profile_stages|Error|error:|Traceback' | tail -12
      for stage in ${1//,/ }; do  # a stage cut off by the timeout (or a crash) still gets its line
        grep -q "\"stage\": \"$stage\"" "$log" ||
          printf '{"bench": "profile", "stage": "%s", "error": "no record: timeout %s s or crash"}\n' "$stage" "$2" >> "$log"
      done
    }
    prof sam 85
    prof openclip,fusion,extract 60
    prof distill 60
    prof sd 150
    python3 -m benchmarks.profile_stages --render "$log" --markdown "$out/profile-stages.md"
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
  loader)  # issue #22: sas-ray distill end to end vs the step alone, loader processes vs loader threads
    build_segmentator
    step "${one[@]}" timeout 90 python3 benchmarks/distill_loader.py --device cpu --points 150000 --batch 8 \
      --batches 2 --threads 8 --out "$out/distill-loader-cpu-$card.jsonl"  # CPU batches/s per core (processes)
    IFS="|" read -ra loaders <<< "${LOADERS:---threads 2 --processes 6|--threads 8 --processes 0}"
    for loader in "${loaders[@]}"; do
      tag=$(echo $loader | tr -dc 0-9)
      step "${one[@]}" timeout 170 python3 benchmarks/distill_e2e.py --work /tmp/e2e-$tag --points 150000 --batch 8 \
        --scenes 12 --steps 30 --warmup 6 $loader --backend spconv --out "$out/distill-e2e-$card.jsonl"
      rm -rf /tmp/e2e-$tag
    done
    ;;
  oracle)  # issue #22: the GPU study's oracle row alone (the student on ground truth), ~3 min: carry spconv
    build_segmentator
    step "${one[@]}" timeout 560 python3 benchmarks/oracle.py --config configs/study-gpu.yaml --label "$card" \
      --out "$out/oracle-$card.jsonl"
    ;;
  study|study-oracle)  # issue #22: the SAS ablation, student on the GPU (configs/study-gpu.yaml) -> $out/study-gpu.md
    # `study` leaves the oracle out; `study-oracle`, a later call on the same warm machine, adds it: the stage jobs
    # resume, skipping the units /tmp/study-gpu already holds (so does a second `study` call after a timeout)
    build_segmentator
    oracle=$([ "$1" = study-oracle ] && echo true || echo false)
    echo "== sas-ray study, oracle $oracle (timeout 570 s)"
    "${one[@]}" timeout 570 python3 -m jobs.cli study --config configs/study-gpu.yaml --set output=/tmp/study-gpu \
      --set oracle=$oracle --set report="$out/study-gpu.md" > "$out/study-gpu.log" 2>&1
    echo "exit $?"; tail -25 "$out/study-gpu.log"; cp /tmp/study-gpu/study.json "$out/study-gpu.json" 2>/dev/null
    ;;
  *)
    parts="extract|extract-long|mask|oracle|models|distill|extract4|distill4|profile|loader|study|study-oracle"
    echo "usage: gpu_suite.sh $parts" >&2
    exit 2
    ;;
esac
