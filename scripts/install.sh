#!/usr/bin/env bash
# Install sas-ray into ./.venv with the exact CPU pins (constraints-cpu.txt) and the dev extra.
# GPU machines: install with your CUDA torch already present and skip the constraints file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -c constraints-cpu.txt -e ".[dev,spconv]"
.venv/bin/python -c "import sas_ray, torchvision, ray; print('sas-ray installed: torch', __import__('torch').__version__, 'ray', ray.__version__)"
