#!/usr/bin/env bash
# The accelerator check of issue 18: `metarec bench` over melu-ref (256,
# 4,096 and 65,536 tasks per step; second and first order; float32 and
# bfloat16) and the large-catalog workload, one JSON line each, with
# utilisation against the device's measured matmul rate. Under 8 minutes on
# a GPU; `--quick` runs the same list at small sizes on a CPU.
#
#   tools/device_bench.sh [--quick] [--budget=SECONDS]
#
# Needs only what a GPU image has (jax, flax, optax, orbax-checkpoint, ...)
# plus this checkout; ml_collections, if missing, is installed from a wheel
# carried in wheels/ (DEVELOPERS.md says how). Stores are synthetic, built
# on the machine. The driver is tools/device_bench.py.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import ml_collections" 2>/dev/null; then
  shopt -s nullglob
  wheels=(wheels/ml_collections-*.whl)
  if (( ${#wheels[@]} == 0 )); then
    echo "device_bench: ml_collections is not installed and wheels/ holds no" \
         "ml_collections wheel (see DEVELOPERS.md: pip download" \
         "ml_collections --no-deps -d wheels/)" >&2
    exit 2
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps "${wheels[@]}" >&2
fi
exec "$PYTHON" tools/device_bench.py "$@"
