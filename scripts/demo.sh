#!/usr/bin/env bash
# The whole SAS chain on synthetic data, on the CPU, with tiny random models (a few minutes on 2 cores):
# render + prepare -> extract (2 teachers) -> capability (SD + SAM pseudo masks) -> fuse -> superpoints -> evaluate.
# Outputs under out/demo/; the evaluation tables and pictures under out/demo/evaluate/fused/.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
for stage in prepare extract capability fuse superpoints evaluate; do
  echo "== sas-ray $stage"
  .venv/bin/sas-ray "$stage" --config "configs/demo-$stage.yaml"
done
echo "report: out/demo/evaluate/fused/per_class.md"
echo "pictures: out/demo/evaluate/fused/confusion.png and out/demo/evaluate/fused/scenes/*/"
