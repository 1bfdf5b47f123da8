#!/usr/bin/env bash
# The prepared GPU check, as one `device` call (see benchmarks/gpu_suite.py for what it measures
# and its JSON schema). Unpacks the carried packages that the GPU image lacks (.whl/site.tar.xz
# from benchmarks/gpu_carry.sh: grain, array-record, ml-collections, tensorboardX) into
# /tmp/site, checks the device, then runs every section under one time budget, writing
# gpu_suite.json and gpu_suite.log to $OUT (default ./gpu_suite_out).
#
#   bash benchmarks/gpu_suite.sh                  # on the GPU machine; --budget S, --only A,B
#   bash benchmarks/gpu_suite.sh --dry-run        # tiny sizes on a CPU
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ -f .whl/site.tar.xz ]]; then
  mkdir -p /tmp/site && tar -C /tmp/site -xJf .whl/site.tar.xz \
    || { echo "gpu_suite: unpacking .whl/site.tar.xz failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
dry=0
for a in "$@"; do [[ "$a" == "--dry-run" ]] && dry=1; done
if [[ $dry == 0 ]] && ! command -v nvidia-smi >/dev/null; then
  echo "gpu_suite: no nvidia-smi on this machine: it needs an NVIDIA GPU (or pass --dry-run)" >&2
  exit 2
fi
export OUT=${OUT:-gpu_suite_out}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
exec "$PY" benchmarks/gpu_suite.py --out "$OUT" "$@"
