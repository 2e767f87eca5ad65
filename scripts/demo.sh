#!/usr/bin/env bash
# SAS on synthetic rooms, on the CPU (a few minutes on 2 cores): two simulated teachers of known skill show the
# method's effect (teacher A, teacher B, direct add, capability fusion, superpoint averaging; configs/study.yaml), then
# the whole chain runs with tiny random models (configs/demo-pipeline.yaml). Outputs under out/demo/; prints the rows,
# the picture paths and out/demo/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
.venv/bin/sas-ray demo --output out/demo "$@"
