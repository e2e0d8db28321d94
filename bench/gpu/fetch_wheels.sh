#!/usr/bin/env bash
# Download the wheels that bench/gpu/run.sh installs on the GPU machine, into .whl/ at the repo
# root (ignored by git; carry it: `carry: [".whl"]`). The GPU machine runs Python 3.12 on
# x86-64 and cannot reach an index. Usage: bench/gpu/fetch_wheels.sh [python-version]
set -euo pipefail
cd "$(dirname "$0")/../.."
pyver="${1:-3.12}"
rm -rf .whl && mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest .whl \
    --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -r bench/gpu/requirements.txt
ls .whl | wc -l | xargs echo "wheels:"
du -sh .whl
