#!/usr/bin/env bash
# Install sas-ray into ./.venv with the exact CPU pins (constraints-cpu.txt) and the dev extra.
# GPU machines: install with your CUDA torch already present and skip the constraints file.
# The `minkowski` extra (MinkowskiEngine 0.5.4, built against the venv's torch by scripts/build_minkowski.sh,
# cached as a wheel) is included unless SAS_RAY_MINKOWSKI=0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
EXTRAS=dev,spconv
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
if [ "${SAS_RAY_MINKOWSKI:-1}" != 0 ]; then
  .venv/bin/pip install -q -c constraints-cpu.txt torch numpy  # ME compiles against this torch; it imports numpy
  PYTHON=.venv/bin/python bash scripts/build_minkowski.sh
  EXTRAS=$EXTRAS,minkowski
fi
.venv/bin/pip install -q -c constraints-cpu.txt -e ".[$EXTRAS]"
# nuscenes-devkit (dev: the nuScenes converter's cross-check) declares numpy<2; what the tests use of it runs on
# numpy 2, and its imports are in the dev extra, so it goes in without its own pins.
.venv/bin/pip install -q --no-deps -c constraints-cpu.txt nuscenes-devkit
.venv/bin/python -c "import sas_ray.models, torchvision, ray; print('sas-ray installed: torch', __import__('torch').__version__, 'ray', ray.__version__)"
