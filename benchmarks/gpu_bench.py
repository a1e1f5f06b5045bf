"""Forward + backward of softmax cross-entropy on one GPU, side by side in one process.

Providers: softmaxce (``backend="triton"``, out of place and in place; and its fused kernel
alone, in place, to show what the O(N) work and autograd around it cost), ``F.cross_entropy``
eager, ``torch.compile(F.cross_entropy)`` (not in a dry run), Liger-Kernel's cross-entropy
(in place; when importable), and the copy floor (a device-to-device copy of the logits). For each
``(V, dtype)``: the median time of ``--reps`` timed iterations after warm-ups (CUDA events
around the forward and ``torch.autograd.grad``; the logits are restored by a copy outside the
timed region), the bandwidth of one read and one write of the logits (``2 N V itemsize``
bytes) per second, its fraction of the copy's, and the peak device memory above the inputs as
a fraction of the logits' size. The table is printed and written as CSV.

Usage (benchmarks/gpu_check.sh runs it)::

    python benchmarks/gpu_bench.py --csv out.csv              # N=16384, V in 32000/128256/256000
    TRITON_INTERPRET=1 python benchmarks/gpu_bench.py --dry-run  # tiny shapes on CPU
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import softmaxce.torch as sct

COLUMNS = [
    "provider", "inplace", "dtype", "N", "V", "ms", "GB_per_s", "frac_of_copy", "extra_mem_frac",
    "note",
]  # fmt: skip


def providers(dry_run: bool) -> dict:
    """name -> (inplace, f(h, t) -> loss), for the providers that can run here."""
    out = {
        "softmaxce": (False, lambda h, t: sct.cross_entropy(h, t, backend="triton")),
        "softmaxce-inplace": (
            True,
            lambda h, t: sct.cross_entropy(h, t, backend="triton", inplace_backward=True),
        ),
        "F.cross_entropy": (False, F.cross_entropy),
    }
    if not dry_run:  # (on CPU it would time a C++ compiler's first run)
        out["torch.compile"] = (False, torch.compile(lambda h, t: F.cross_entropy(h, t)))
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss

        out["liger"] = (True, LigerCrossEntropyLoss())  # (its gradient overwrites the input)
    except Exception as exc:  # (not carried, or not for this torch/triton)
        print(f"liger: not available ({type(exc).__name__}: {exc})", file=sys.stderr)
    return out


class Clock:
    """Milliseconds of a region: CUDA events on a GPU, the wall clock (after the work) on CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def __enter__(self):
        if self.cuda:
            self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
            self.a.record()
        else:
            self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.b.record()
        else:
            self.ms = (time.perf_counter() - self.t) * 1e3

    def elapsed(self) -> float:
        if self.cuda:
            self.b.synchronize()
            return self.a.elapsed_time(self.b)
        return self.ms


def measure(step, restore, cuda: bool, warm: int, reps: int) -> tuple[float, int]:
    """(median ms of ``step``, peak bytes above what was allocated before it)."""
    times, extra = [], 0
    for i in range(warm + reps):
        args = restore()
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        with Clock(cuda) as clock:
            step(*args)
        ms = clock.elapsed()
        if cuda:
            extra = max(extra, torch.cuda.max_memory_allocated() - base)
        if i >= warm:
            times.append(ms)
        del args
    return statistics.median(times), extra


def kernel_only(t: torch.Tensor, v: int):
    """The fused Triton kernel alone, in place (no autograd, no O(N) work around it): how much
    of softmaxce's time the row context, the loss's reduction and autograd add."""
    from softmaxce._core import rows
    from softmaxce._options import loss_options
    from softmaxce._triton import launchers

    opts = loss_options()
    ctx = rows.row_context(t[:, None], t, v, opts)
    one = torch.ones((), dtype=torch.float64, device=t.device)
    fused = launchers().fused
    return lambda h: fused(h, t, opts, ctx, row_scale=one, out=h)


def copy_floor(x: torch.Tensor, cuda: bool, warm: int, reps: int) -> float:
    """Milliseconds of a device-to-device copy of ``x`` into a buffer of its own."""
    y = torch.empty_like(x)
    return measure(lambda: y.copy_(x), tuple, cuda, warm, reps)[0]


def one_shape(n: int, v: int, dtype, dev: str, provs: dict, warm: int, reps: int) -> list[dict]:
    cuda = dev == "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    base = (3 * torch.randn((n, v), generator=g, device=dev)).to(dtype).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g, device=dev)
    logits = n * v * base.element_size()
    rows = []
    copy_ms = copy_floor(base.detach(), cuda, warm, reps)
    copy_bw = 2 * logits / copy_ms / 1e6
    rows.append(row("copy", False, dtype, n, v, copy_ms, copy_bw, copy_bw, 0, logits))
    provs = {**provs, "softmaxce-kernel": (True, kernel_only(t, v))}
    for name, (inplace, f) in provs.items():

        def step(h, f=f, name=name):
            if name == "softmaxce-kernel":
                return f(h)
            loss = f(h, t)
            return torch.autograd.grad(loss, h)

        def restore():
            return (base.clone(),)  # a non-leaf: in place may overwrite it

        try:
            ms, extra = measure(step, restore, cuda, warm, reps)
        except Exception as exc:  # one provider failing must not lose the table
            rows.append({**row(name, inplace, dtype, n, v, 0, 0, copy_bw, 0, logits),
                         "note": f"{type(exc).__name__}: {exc}"[:200]})  # fmt: skip
            continue
        bw = 2 * logits / ms / 1e6
        # (the inputs are allocated before; the fresh gradient of an out-of-place provider
        # counts: extra memory is what a training step pays above its logits)
        rows.append(row(name, inplace, dtype, n, v, ms, bw, copy_bw, extra, logits))
    return rows


def row(name, inplace, dtype, n, v, ms, bw, copy_bw, extra, logits) -> dict:
    return {
        "provider": name,
        "inplace": inplace,
        "dtype": str(dtype).replace("torch.", ""),
        "N": n,
        "V": v,
        "ms": f"{ms:.4f}",
        "GB_per_s": f"{bw:.1f}",
        "frac_of_copy": f"{bw / copy_bw:.3f}" if copy_bw else "",
        "extra_mem_frac": f"{extra / logits:.4f}",
        "note": "",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=None, help="write the table here too")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, CPU (interpreter)")
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--vocab", type=int, nargs="*", default=[32000, 128256, 256000])
    ap.add_argument("--dtypes", nargs="*", default=["bfloat16", "float32"])
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--block", type=int, default=None, help="the kernels' largest chunk")
    ap.add_argument("--warps", type=int, default=None, help="the kernels' warps")
    a = ap.parse_args(argv)
    from softmaxce._triton import launchers

    if a.block:
        launchers().MAX_BLOCK = a.block
    if a.warps:
        launchers().NUM_WARPS = a.warps
    dev = "cuda" if torch.cuda.is_available() and not a.dry_run else "cpu"
    if a.dry_run:
        a.n, a.vocab, a.dtypes, a.warm, a.reps = 4, [33, 130], ["float32"], 1, 2
    elif dev != "cuda":
        print("no CUDA device: use --dry-run", file=sys.stderr)
        return 2
    if dev == "cuda":
        print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    provs = providers(a.dry_run)
    print(",".join(COLUMNS), flush=True)
    table = []
    for dt in a.dtypes:
        for v in a.vocab:
            rows = one_shape(a.n, v, getattr(torch, dt), dev, provs, a.warm, a.reps)
            for r in rows:
                print(",".join(str(r[c]) for c in COLUMNS), flush=True)
            table += rows
            if dev == "cuda":
                torch.cuda.empty_cache()
    if a.csv:
        with open(a.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
