#!/usr/bin/env bash
# GPU check: vramgate's measurements against nvidia-smi and torch.cuda. See bench/gpu_check.py for the checks.
# Usage (from anywhere): bash bench/gpu_check.sh   - exits non-zero when any check fails.
set -u
cd "$(dirname "$0")/.." || exit 2
PY="${PYTHON:-python3}"
exec env PYTHONUNBUFFERED=1 "$PY" bench/gpu_check.py "$@"
