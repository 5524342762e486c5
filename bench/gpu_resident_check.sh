#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: a diffusers pipeline resident on the GPU, two runs through the gate reserving
# only their working memory, their measured peaks against the ledger. Needs torch, diffusers, transformers and
# accelerate; wheels for packages that machine lacks can be put in .whl/ (see bench/gpu_check.sh).
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
timeout 300 python3 bench/gpu_resident_check.py
