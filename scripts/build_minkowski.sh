#!/usr/bin/env bash
# Build MinkowskiEngine 0.5.4 (CPU, or CUDA when nvcc is on PATH) into the current Python environment: the
# optional `minkowski` sparse backend of `sas-ray distill` (OpenScene's own library).
# Recipe: OpenBLAS headers, setuptools<81, no build isolation, MAX_JOBS=2 (~5.5 min on 2 cores), and the
# `collections.Sequence` imports that Python 3.10+ removed patched to `collections.abc`.
set -euo pipefail
PYTHON="${PYTHON:-python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
  sudo apt-get install -y libopenblas-dev
fi
"$PYTHON" -m pip install "setuptools<81" wheel ninja
"$PYTHON" -m pip download --no-deps --no-binary :all: -d "$WORK" MinkowskiEngine==0.5.4
tar -xzf "$WORK"/MinkowskiEngine-0.5.4.tar.gz -C "$WORK"
SRC="$WORK/MinkowskiEngine-0.5.4"
# `from collections import Sequence` -> collections.abc (MinkowskiKernelGenerator keeps namedtuple from collections).
grep -rl "from collections import .*Sequence" "$SRC/MinkowskiEngine" | while read -r f; do
  sed -i -E 's/^from collections import Sequence$/from collections.abc import Sequence/; s/^from collections import namedtuple, Sequence$/from collections import namedtuple\nfrom collections.abc import Sequence/' "$f"
done
cd "$SRC"
BLAS_FLAGS=(--blas=openblas)
if ! command -v nvcc >/dev/null 2>&1; then
  BLAS_FLAGS+=(--cpu_only)
fi
MAX_JOBS="${MAX_JOBS:-2}" "$PYTHON" -m pip install --no-build-isolation -v . \
  --config-settings="--build-option=${BLAS_FLAGS[*]}" || \
  MAX_JOBS="${MAX_JOBS:-2}" "$PYTHON" setup.py install "${BLAS_FLAGS[@]}"
"$PYTHON" -c "import MinkowskiEngine as ME; print('MinkowskiEngine', ME.__version__)"
