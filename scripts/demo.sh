#!/usr/bin/env bash
# The whole SAS chain on synthetic data, on the CPU, with tiny random models (a few minutes on 2 cores):
# render + prepare -> extract (2 teachers) -> capability (SD + SAM pseudo masks) -> fuse -> superpoints -> evaluate,
# as configured in configs/demo-pipeline.yaml. Outputs under out/demo/; prints the report and picture paths.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
.venv/bin/sas-ray demo --output out/demo "$@"
