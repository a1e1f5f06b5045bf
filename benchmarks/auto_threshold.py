"""Where does backend="numba" start to beat backend="numpy"? (why "auto" takes the kernel at
every size where numba can run: see softmaxce._dispatch)

    python benchmarks/auto_threshold.py [--threads 2] [--repeats 50]

Times softmaxce.softmax_cross_entropy_with_grad (loss + gradient) and softmax_cross_entropy
(loss only), float32, index targets, through the public API with each backend (so the call
overhead of validation and dispatch is included), over a grid of (N, C), interleaving the two
backends. Prints the median times, their ratio, and the smallest N*C from which numba is
faster at every larger size of the grid.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args(argv)
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)

    import numpy as np

    import softmaxce

    shapes = [
        (1, 10), (8, 10), (64, 10), (256, 10), (1024, 10), (4096, 10),
        (1, 100), (8, 100), (32, 100), (128, 100), (512, 100),
        (1, 1000), (4, 1000), (16, 1000), (64, 1000), (256, 1000),
        (1, 10000), (4, 10000), (16, 10000),
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    results = []
    for n, c in shapes:
        x = rng.standard_normal((n, c), dtype=np.float32)
        t = rng.integers(0, c, n)
        calls = {}
        for b in ("numpy", "numba"):
            calls[("full", b)] = lambda b=b, x=x, t=t: softmaxce.softmax_cross_entropy_with_grad(
                x, t, backend=b
            )
            calls[("loss", b)] = lambda b=b, x=x, t=t: softmaxce.softmax_cross_entropy(
                x, t, backend=b
            )
        for f in calls.values():
            f()
            f()
        times = {k: [] for k in calls}
        for _ in range(args.repeats):
            for k, f in calls.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) * 1e6 for k, v in times.items()}
        results.append((n, c, med))
    print(f"threads={args.threads}; median microseconds per call (public API, float32)")
    print(f"{'N':>6} {'C':>6} {'N*C':>9} | {'full np':>9} {'full nb':>9} {'np/nb':>6} | "
          f"{'loss np':>9} {'loss nb':>9} {'np/nb':>6}")  # fmt: skip
    for n, c, m in sorted(results, key=lambda r: r[0] * r[1]):
        print(
            f"{n:>6} {c:>6} {n * c:>9} | {m['full', 'numpy']:>9.1f} {m['full', 'numba']:>9.1f} "
            f"{m['full', 'numpy'] / m['full', 'numba']:>6.2f} | {m['loss', 'numpy']:>9.1f} "
            f"{m['loss', 'numba']:>9.1f} {m['loss', 'numpy'] / m['loss', 'numba']:>6.2f}"
        )
    for mode in ("full", "loss"):
        ordered = sorted(results, key=lambda r: r[0] * r[1])
        threshold = None
        for k in range(len(ordered)):
            if all(r[2][mode, "numba"] <= r[2][mode, "numpy"] for r in ordered[k:]):
                threshold = ordered[k][0] * ordered[k][1]
                break
        print(f"{mode}: numba is faster for every size from N*C = {threshold}")


if __name__ == "__main__":
    main()
