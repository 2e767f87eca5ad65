#!/usr/bin/env bash
# Build MinkowskiEngine 0.5.4 (OpenScene's sparse-conv library) into the Python environment of $PYTHON: the
# optional `minkowski` backend of `sas-ray distill`. CPU-only unless torch has CUDA and nvcc is on PATH (the CUDA
# build is not exercised here).
# Recipe: OpenBLAS headers; setuptools<81 and wheel in a scratch folder on PYTHONPATH (the environment's own
# setuptools is left alone); no build isolation (ME's setup.py imports torch) and its options passed as setuptools
# global options; MAX_JOBS=2 (~5.5 min on 2 idle cores); then, in the wheel, the `collections.Sequence` imports
# that Python 3.10 removed patched to `collections.abc`.
# The patched wheel is kept under $SAS_RAY_WHEEL_CACHE (default ~/.cache/sas-ray/wheels), per torch and Python
# version, and installed from there by later runs without building (pip's own wheel cache, which ignores the torch
# version ME was compiled against, is bypassed). Compiler output: $MINKOWSKI_BUILD_LOG.
set -euo pipefail
PYTHON="${PYTHON:-python}"
LOG="${MINKOWSKI_BUILD_LOG:-/tmp/me-build.log}"
VERSION=0.5.4
TAG="$("$PYTHON" -c "import sys, torch; print(f'torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}')")"
CACHE="${SAS_RAY_WHEEL_CACHE:-$HOME/.cache/sas-ray/wheels}/minkowskiengine-$VERSION-$TAG"

if ! compgen -G "$CACHE/*.whl" >/dev/null; then
  if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
    APT=(apt-get)
    [ "$(id -u)" = 0 ] || APT=(sudo apt-get)
    "${APT[@]}" install -y -q libopenblas-dev || { "${APT[@]}" update -q && "${APT[@]}" install -y -q libopenblas-dev; }
  fi
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  "$PYTHON" -m pip install -q --target "$WORK/tools" "setuptools<81" wheel
  OPTIONS=(--config-settings=--global-option=--blas=openblas)
  if ! "$PYTHON" -c "import sys, torch; sys.exit(torch.version.cuda is None)" || ! command -v nvcc >/dev/null; then
    OPTIONS+=(--config-settings=--global-option=--cpu_only)
  fi
  echo "building MinkowskiEngine $VERSION ($TAG, log: $LOG)"
  # ME's setup.py runs `pip uninstall MinkowskiEngine`: the environment's own pip comes first on PATH.
  if ! PATH="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')"):$PATH" PYTHONPATH="$WORK/tools" \
      MAX_JOBS="${MAX_JOBS:-2}" "$PYTHON" -m pip wheel -v --no-cache-dir --no-deps --no-build-isolation \
      --no-binary MinkowskiEngine -w "$WORK/built" "${OPTIONS[@]}" "MinkowskiEngine==$VERSION" >"$LOG" 2>&1; then
    tail -n 40 "$LOG"
    exit 1
  fi
  PYTHONPATH="$WORK/tools" "$PYTHON" -m wheel unpack -d "$WORK/unpacked" "$WORK"/built/*.whl >/dev/null
  SRC="$(echo "$WORK"/unpacked/*/MinkowskiEngine)"
  # `from collections import Sequence` -> collections.abc (MinkowskiKernelGenerator keeps namedtuple from collections).
  grep -rl "from collections import .*Sequence" "$SRC" | while read -r f; do
    sed -i -E 's/^from collections import Sequence$/from collections.abc import Sequence/; s/^from collections import (Sequence, namedtuple|namedtuple, Sequence)$/from collections import namedtuple\nfrom collections.abc import Sequence/' "$f"
  done
  if grep -rn "from collections import .*Sequence" "$SRC"; then
    echo "build_minkowski.sh: unpatched collections.Sequence imports left (above)" >&2
    exit 1
  fi
  mkdir -p "$WORK/packed" "$CACHE"
  PYTHONPATH="$WORK/tools" "$PYTHON" -m wheel pack -d "$WORK/packed" "$(dirname "$SRC")" >/dev/null
  WHEEL="$(basename "$WORK"/packed/*.whl)"
  cp "$WORK/packed/$WHEEL" "$CACHE/.$WHEEL" && mv "$CACHE/.$WHEEL" "$CACHE/$WHEEL"  # only whole wheels in the cache
fi
"$PYTHON" -m pip install -q --no-deps --force-reinstall "$CACHE"/*.whl
"$PYTHON" -W ignore::UserWarning -c "import MinkowskiEngine as ME; print('MinkowskiEngine', ME.__version__)"
