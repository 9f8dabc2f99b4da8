#!/usr/bin/env bash
# Run the prepared GPU check on a machine with an NVIDIA GPU, offline, with what is installed there.
# Where the rwkv-edge package is not installed, its folders are put on the path through a namespace shim.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import rwkv_edge.runtime" 2>/dev/null; then
  shim=$(mktemp -d)
  mkdir -p "$shim/rwkv_edge"
  for part in exporter runtime quant; do ln -s "$PWD/$part" "$shim/rwkv_edge/$part"; done
  export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
fi
exec python3 scripts/gpu_check.py "$@"
