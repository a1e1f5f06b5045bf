#!/usr/bin/env bash
# Fetch the wheels benchmarks/gpu_check.sh needs on the GPU machine (which has no index) into
# .whl/ (ignored by git): array-api-compat (softmaxce's dependency, missing there) and
# Liger-Kernel (pure Python over Triton), for CPython 3.12. Run once where pip reaches PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo /.whl/ >> "$EXCLUDE"
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 --platform any -d .whl \
    array-api-compat==1.16.0 liger-kernel==0.8.5
ls -l .whl
