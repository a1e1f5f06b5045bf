"""Forward + backward of the PyTorch front end against F.cross_entropy, on CPU.

Providers, each measured side by side in one run (rounds interleave the providers, so that
load from other processes hits all of them alike):

* ``torch``            F.cross_entropy
* ``torch_compile``    torch.compile(F.cross_entropy) (inductor, dynamic=False)
* ``softmaxce``        softmaxce.torch.cross_entropy
* ``softmaxce_inplace`` softmaxce.torch.cross_entropy(inplace_backward=True)

One measurement is ``loss = f(logits, target); torch.autograd.grad(loss, logits)`` on a fresh
non-leaf float32 ``logits`` (made outside the timed region: the in-place provider overwrites
it). Reported: the median (and quartiles) of the wall time, the ratio of the medians against
``torch``, and the peak resident memory of one measurement *beyond* the logits and the target
(Linux: the VmHWM high-water mark, reset through /proc/self/clear_refs before the measurement.
The script re-executes itself with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc serves every
allocation of 64 KiB or more by mmap and returns it on free: RSS then follows the arrays, and
heap reuse cannot hide them; smaller allocations stay invisible, so the (64, 10) row reads 0).
It also sets ``NUMBA_THREADING_LAYER=workqueue`` (unless set): numba's default "omp" layer,
once started (``numba.get_num_threads()`` starts it), runs a second OpenMP thread pool beside
PyTorch's, which on a 2-core machine made every later torch op up to 10x slower and would
flatter softmaxce unfairly.

    python benchmarks/bench_torch_frontend.py [--quick] [--repeats N] [--torch-threads N]

Prints a table and writes benchmarks/results/torch_frontend.csv.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import softmaxce
import softmaxce._dispatch
import softmaxce.torch as sct

SHAPES = [(64, 10), (512, 1000), (4096, 32000)]
REPEATS = {(64, 10): 200, (512, 1000): 40, (4096, 32000): 7}
RESULTS = Path(__file__).resolve().parent / "results"


def providers():
    compiled = torch.compile(F.cross_entropy, dynamic=False)
    return {
        "torch": F.cross_entropy,
        "torch_compile": compiled,
        "softmaxce": sct.cross_entropy,
        "softmaxce_inplace": lambda x, t: sct.cross_entropy(x, t, inplace_backward=True),
    }


def make_inputs(n, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(n, c, generator=g)
    target = torch.randint(0, c, (n,), generator=g)
    return src, target


def fresh_logits(src, anchor):
    """A non-leaf copy of ``src`` (as a layer's output would be)."""
    with torch.enable_grad():
        return src + anchor


def step(fn, logits, target):
    loss = fn(logits, target)
    (grad,) = torch.autograd.grad(loss, logits)
    return loss, grad


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def peak_extra_bytes(fn, src, target, anchor):
    """Peak RSS of one forward + backward beyond what exists before it (Linux only)."""
    logits = fresh_logits(src, anchor)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return float("nan")
    before = _status("VmRSS")
    out = step(fn, logits, target)
    peak = _status("VmHWM")
    del out
    return peak - before


def kernel_name(n, c):
    x = np.zeros((n, c), np.float32)
    t = np.zeros(n, np.int64)
    k = softmaxce._dispatch.select("auto", x, t)
    return "softmaxce._core.rows.fused_rows" if k is None else f"{k.__module__}.{k.__name__}"


def check_agreement(provs, src, target, anchor):
    """Every provider gives the same loss and gradient (float32 tolerances)."""
    ref_loss, ref_grad = step(provs["torch"], fresh_logits(src, anchor), target)
    for name, fn in provs.items():
        loss, grad = step(fn, fresh_logits(src, anchor), target)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7, msg=name)


def bench_shape(n, c, repeats, provs):
    src, target = make_inputs(n, c)
    anchor = torch.zeros((), requires_grad=True)
    check_agreement(provs, src, target, anchor)  # also the warm-up (JIT, torch.compile)
    times = {name: [] for name in provs}
    for _ in range(repeats):
        for name, fn in provs.items():
            logits = fresh_logits(src, anchor)
            t0 = time.perf_counter()
            out = step(fn, logits, target)
            times[name].append(time.perf_counter() - t0)
            del out, logits
    rows = []
    base = statistics.median(times["torch"])
    logits_bytes = n * c * 4
    for name, fn in provs.items():
        ts = times[name]
        q1, med, q3 = np.percentile(ts, [25, 50, 75])
        extra = peak_extra_bytes(fn, src, target, anchor)
        rows.append(
            {
                "shape": f"{n}x{c}",
                "provider": name,
                "repeats": repeats,
                "median_ms": 1e3 * med,
                "q1_ms": 1e3 * q1,
                "q3_ms": 1e3 * q3,
                "speedup_vs_torch": base / med,
                "peak_extra_MiB": extra / 2**20,
                "peak_extra_in_logits": extra / logits_bytes,
            }
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the two small shapes")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per shape")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch.set_num_threads (intra-op)"
    )
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    shapes = SHAPES[:2] if args.quick else SHAPES

    print(
        f"softmaxce {softmaxce.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} logical CPUs, torch threads "
        f"{torch.get_num_threads()}, NUMBA_THREADING_LAYER="
        f"{os.environ.get('NUMBA_THREADING_LAYER', '(default)')}, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    provs = providers()
    all_rows = []
    for n, c in shapes:
        print(f"\n{n} x {c} float32, kernel: {kernel_name(n, c)}")
        rows = bench_shape(n, c, args.repeats or REPEATS[(n, c)], provs)
        all_rows += rows
        print(
            f"  {'provider':<18} {'median ms':>10} {'[q1, q3] ms':>20} {'vs torch':>9} "
            f"{'peak extra MiB':>15} {'(x logits)':>10}"
        )
        for r in rows:
            quartiles = "[{:.3f}, {:.3f}]".format(r["q1_ms"], r["q3_ms"])
            print(
                f"  {r['provider']:<18} {r['median_ms']:>10.3f} {quartiles:>20} "
                f"{r['speedup_vs_torch']:>8.2f}x {r['peak_extra_MiB']:>15.1f} "
                f"{r['peak_extra_in_logits']:>10.2f}"
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "torch_frontend.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(all_rows[0]))
        writer.writeheader()
        writer.writerows(all_rows)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    if sys.platform == "linux" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
        os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
        os.execv(sys.executable, [sys.executable, *sys.argv])
    main()
