#!/usr/bin/env bash
# Fetch, on this (networked) machine, the wheels the lent GPU machine lacks, into .whl/ (git-ignored).
# Its image has torch, tokenizers, safetensors, huggingface_hub, matplotlib and tqdm, but an older
# transformers and no pycma. Both are pure-Python wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "transformers==5.24.0" "cma==4.5.0"
ls -la .whl
