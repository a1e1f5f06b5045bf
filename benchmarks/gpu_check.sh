#!/usr/bin/env bash
# The GPU check of softmaxce's Triton kernels (issue 12): under 5 minutes on one NVIDIA GPU,
# nothing downloaded.
#
#   1. the Triton tests on the device (tests/test_triton_*.py: every option against the core,
#      fp32/fp16/bf16, offsets beyond 2**31, no host synchronisation), in parallel when
#      pytest-xdist is there (compilations dominate);
#   2. benchmarks/gpu_bench.py: forward + backward at N=16384, V in {32000, 128256, 256000},
#      bf16 and fp32, in place and not: softmaxce, F.cross_entropy eager, torch.compile,
#      Liger-Kernel, the copy floor; ms, GB/s of one read + one write of the logits, fraction of
#      the copy's; CSV.
#
# Packages the machine lacks travel as wheels in .whl/ (installed here with --no-index into a
# private folder): array-api-compat (a softmaxce dependency) and liger-kernel (pure Python);
# benchmarks/gpu_wheels.sh fetches them where pip can reach the index.
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [OUT_DIR]      (OUT_DIR: default $OUT, else
#        benchmarks/results). --dry-run: Triton's interpreter on CPU, a few tests, tiny shapes.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT_DIR=${1:-${OUT:-benchmarks/results}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
T0=$(date +%s)

if ls .whl/*.whl >/dev/null 2>&1; then
    SITE=${TMPDIR:-/tmp}/softmaxce-gpu-site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl || exit 1
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [ "$DRY" = 1 ]; then export TRITON_INTERPRET=1; fi

"$PY" - <<'PYEOF' 2>&1 | tee "$OUT_DIR/gpu_env.txt"
import importlib.util, platform, torch
print("python", platform.python_version(), "torch", torch.__version__)
for name in ("triton", "array_api_compat", "liger_kernel", "xdist"):
    spec = importlib.util.find_spec(name)
    ver = getattr(__import__(name), "__version__", "?") if spec else "MISSING"
    print(name, ver)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)")
PYEOF

status=0
PYTEST=(-m pytest tests/test_triton_kernels.py tests/test_triton_torch.py -q -p no:cacheprovider
        -o addopts= -rs --junitxml "$OUT_DIR/gpu_tests.xml")
if [ "$DRY" = 1 ]; then
    PYTEST+=(-k "plain or odd or in_place or matches_the_core_on_nd")
elif "$PY" -c "import xdist" 2>/dev/null; then
    PYTEST+=(-n 8)
fi
echo "== tests"
timeout 150 "$PY" "${PYTEST[@]}" 2>&1 | tee "$OUT_DIR/gpu_tests.log" || status=1

echo "== benchmark"
BENCH=(benchmarks/gpu_bench.py --csv "$OUT_DIR/gpu_bench.csv")
if [ "$DRY" = 1 ]; then BENCH+=(--dry-run); fi
timeout 170 "$PY" "${BENCH[@]}" 2>&1 | tee "$OUT_DIR/gpu_bench.log" || status=1

echo "== done in $(( $(date +%s) - T0 )) s, status $status; results in $OUT_DIR"
exit $status
