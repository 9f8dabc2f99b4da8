#!/usr/bin/env bash
# Run the prepared GPU check on a machine with an NVIDIA GPU, offline, with what is installed there.
# Where rwkv-edge is not installed, this checkout is built into a temporary folder first (pip, no index, no
# dependencies: numpy, onnx, onnxruntime-gpu and torch must already be there).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import rwkv_edge.runtime" 2>/dev/null; then
  target=$(mktemp -d)
  trap 'rm -rf "$target"' EXIT
  if ! python3 -m pip install --quiet --no-deps --no-index --no-build-isolation --target "$target" . >"$target.log" 2>&1; then
    echo "error: rwkv-edge is not installed and pip cannot build this checkout offline (it needs setuptools >= 70; see $target.log)" >&2
    exit 2
  fi
  export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 scripts/gpu_check.py "$@"
