#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the gate over the real GPU, then the demo with a real torch workload and its replay.
# Wheels for packages that machine lacks can be put in .whl/ (see bench/gpu_check.sh).
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
OUT=${OUT:-/tmp}
rc=0
python3 bench/gpu_gate_check.py || rc=1
python3 -m vramgate demo --no-live --time-scale 0.003 --log "$OUT/demo-gpu.jsonl" || rc=1
python3 -m vramgate replay "$OUT/demo-gpu.jsonl" || rc=1
exit $rc
