"""First-call cost of the numba kernels: cold (empty disk cache) and warm (cache on disk).

    python benchmarks/compile_time.py

Runs fresh interpreters with NUMBA_CACHE_DIR pointing at a new temporary directory: the first
run compiles and writes the cache, the second loads it. Each child reports the import time of
softmaxce._numba and the time of the first call of each kernel variant.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, time
t0 = time.perf_counter()
import numpy as np
from softmaxce import _numba as nk
from softmaxce._options import LossOptions
out = {"import": time.perf_counter() - t0}
x = np.random.default_rng(0).standard_normal((64, 1000)).astype(np.float32)
t = np.zeros(64, np.int64)

def first(name, x, grad, **more):
    opts = LossOptions(**more.pop("opts", {}))
    t0 = time.perf_counter()
    nk.fused_rows(x, t, opts, row_scale=1.0, out=grad, **more)
    out[name] = time.perf_counter() - t0

b = x.copy()
first("float32 index, in place", b, b)
first("float32 index, out of place", x, np.empty_like(x))
first("float32 index, smoothing, out of place", x, np.empty_like(x), opts={"label_smoothing": 0.1})
first("float32 where, out of place", x, np.empty_like(x), where=x > 0)
x64 = x.astype(np.float64)
first("float64 index, out of place", x64, np.empty_like(x64))
t0 = time.perf_counter()
nk.softmax_rows(x, np.empty_like(x))
out["float32 softmax_rows"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def main():
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d)
        runs = []
        for label in ("cold (no cache)", "warm (disk cache)"):
            r = subprocess.run(
                [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
            )
            runs.append((label, json.loads(r.stdout.strip().splitlines()[-1])))
    keys = list(runs[0][1])
    print(f"{'seconds':<40}" + "".join(f"{label:>20}" for label, _ in runs))
    for k in keys:
        print(f"{k:<40}" + "".join(f"{res[k]:>20.2f}" for _, res in runs))


if __name__ == "__main__":
    main()
