"""Fused softmax cross-entropy on the CPU: softmaxce against NumPy, PyTorch and JAX.

    softmaxce bench [--quick] [--sizes 64x10,4096x32000] [--providers ...]
                    [--modes forward,backward,full] [--threads 2] [--repeats N] [--out DIR]

(``python benchmarks/bench_fused.py`` runs the same, writing into benchmarks/results/.) This
module is the benchmark harness; it lives in the package only so that the ``softmaxce bench``
command can run it. Nothing in the library imports it, and the test suite times nothing.

Providers (float32 logits (N, C), int64 labels, mean reduction):

* ``numba_inplace``  softmaxce.softmax_cross_entropy_with_grad(..., inplace=True,
                     backend="numba"): the gradient overwrites the logits
* ``numba``          the same out of place (allocates the gradient)
* ``numpy``          the same with backend="numpy" (softmaxce's NumPy core)
* ``numpy_plain``    NumPy as tutorials write it: softmax, -log p[label], gradient p - onehot
* ``torch``          PyTorch eager F.cross_entropy, backward through autograd
* ``torch_compile``  torch.compile of the same (inductor; compiled once per shape, untimed)
* ``jax``            jax.jit(jax.value_and_grad(optax integer-label CE mean)); forward is
                     jax.jit of the loss alone
* ``jax_ffi``        softmaxce.jax.softmax_cross_entropy(backend="ffi") under the same
                     jax.jit(jax.value_and_grad(...)): the numba kernel behind XLA's FFI
* ``jax_xla``        the same with backend="xla": softmaxce's core as XLA operations
* ``copy``           the memory floor: np.copyto(preallocated, logits), one read + one write

Modes: ``forward`` (loss only), ``backward`` (the gradient, given what forward saved; only for
providers where it is a separate step: numpy_plain, torch, torch_compile), ``full`` (loss and
gradient). ``copy`` is listed under every mode.

Timing: every provider is warmed up (compiles excluded), then ``repeats`` rounds run every
(provider, mode) once per round, interleaved in a new random order each round, so that load
from other processes hits all of them alike; for sizes of 1M elements or more each call is
preceded by a 50 ms pause, so that thread pools that spin after their work (OpenMP, XLA) do
not bill the next provider. Reported: median and the 20th/80th percentiles of the wall time,
and the ratios of the medians against ``torch`` (same mode) and against ``copy``.

Threads: numba, PyTorch (intra- and inter-op) and the OpenMP/BLAS pools are set to
``--threads``; XLA's CPU pool is sized from the CPUs the process may use, so when
``--threads`` is below the CPU count the process is pinned to that many CPUs
(os.sched_setaffinity). The allocator is left at its defaults, so that out-of-place providers
pay what they pay in real use. Before measuring, ``--prefault-gb`` (default 6) GB are
allocated, touched and freed once: in a virtual machine the first touch of a guest page can
cost a host-side fault (measured here: a fresh 500 MB buffer took 830 ms to fill the first
time, 85 ms afterwards), which would otherwise land at random on whichever provider allocates
first.

Peak extra memory, beyond the inputs, of one (untimed) call:
* NumPy/numba providers: tracemalloc's peak (NumPy reports its array buffers to tracemalloc;
  the numba kernels allocate no arrays inside);
* torch/jax: the resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs)
  minus the RSS before the call (Linux only; elsewhere the column is empty). glibc maps
  buffers above 32 MiB afresh on each allocation, so the large sizes are measured exactly;
  smaller buffers may reuse freed heap pages and read low.

``--jax`` is the JAX comparison of issue 15: sizes 4096x32000, providers jax_ffi, jax_xla,
jax (optax) and copy, mode full (unless given), and the ratios optax / softmaxce.jax printed
after the table.

Writes ``fused.csv`` and ``fused.png`` into ``--out`` (default benchmarks/results/) and prints
a table. The default full run takes about 5 to 8 minutes on 2 cores; ``--quick`` (sizes up to
1024 x 8000, fewer rounds, no prefault) about a minute. Providers that cannot run here are
skipped with one line saying why: torch or jax not installed, the numba kernels unavailable
(numba not installed, ``NUMBA_DISABLE_JIT=1``).
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import random
import sys
import time
import tracemalloc
from pathlib import Path

ALL_PROVIDERS = [
    "numba_inplace",
    "numba",
    "numpy",
    "numpy_plain",
    "torch",
    "torch_compile",
    "jax",
    "jax_ffi",
    "jax_xla",
    "copy",
]
JAX_PRESET = {"sizes": "4096x32000", "providers": "jax_ffi,jax_xla,jax,copy", "modes": "full"}
ALL_MODES = ["forward", "backward", "full"]
DEFAULT_SIZES = [(64, 10), (512, 1000), (4096, 32000), (512, 256000)]
QUICK_SIZES = [(64, 10), (512, 1000), (1024, 8000)]


EXAMPLES = """examples:
  softmaxce bench --quick
  softmaxce bench --sizes 4096x32000 --providers numba_inplace,numba,torch,copy --modes full
  softmaxce bench --out results/ --no-plot"""


def _available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def parse_args(argv=None, prog=None):
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes, fewer repeats (~1 min)")
    p.add_argument("--sizes", help="comma-separated NxC, e.g. 64x10,4096x32000")
    p.add_argument("--providers", help="comma-separated subset of " + ",".join(ALL_PROVIDERS))
    p.add_argument(
        "--modes",
        help="comma-separated subset of " + ",".join(ALL_MODES) + "; or linear alone: fused "
        "linear + cross-entropy (its own options: softmaxce bench --modes linear --help)",
    )
    p.add_argument("--threads", type=int, default=2, help="threads for every provider (2)")
    p.add_argument("--repeats", type=int, help="rounds per size (default: by size)")
    p.add_argument("--out", default="benchmarks/results", help="folder for CSV, table, plot")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument(
        "--jax", action="store_true", help="softmaxce.jax (FFI kernel, core) against optax"
    )
    p.add_argument(
        "--prefault-gb",
        type=float,
        default=None,
        help="touch this much fresh memory once before measuring (default 6, 0 with --quick)",
    )
    args = p.parse_args(argv)
    if args.jax:
        for key, value in JAX_PRESET.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    if args.sizes:
        try:
            args.sizes = [
                tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")
            ]
        except ValueError:
            p.error(f"--sizes: expected NxC pairs such as 64x10,4096x32000, got {args.sizes!r}")
        if any(len(s) != 2 or min(s) < 1 for s in args.sizes):
            p.error(f"--sizes: expected positive NxC pairs, got {args.sizes!r}")
    else:
        args.sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    if args.threads < 1:
        p.error(f"--threads: expected a positive integer, got {args.threads}")
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats: expected a positive integer, got {args.repeats}")
    if args.prefault_gb is None:
        args.prefault_gb = 0.0 if args.quick else 6.0
    args.providers = args.providers.split(",") if args.providers else list(ALL_PROVIDERS)
    args.modes = args.modes.split(",") if args.modes else list(ALL_MODES)
    for name in args.providers:
        if name not in ALL_PROVIDERS:
            p.error(f"--providers: unknown provider {name!r}; choose from {ALL_PROVIDERS}")
    for name in args.modes:
        if name not in ALL_MODES:
            p.error(f"--modes: unknown mode {name!r}; choose from {ALL_MODES}")
    needs = {"torch": "torch", "torch_compile": "torch", "jax": "jax", "jax_ffi": "jax"}
    needs["jax_xla"] = "jax"
    # provider -> why it cannot run; numba's providers are checked in main(), after the
    # thread settings (numba reads NUMBA_NUM_THREADS when it is imported)
    args.skipped = {
        n: f"{needs[n]} is not installed"
        for n in args.providers
        if n in needs and not _available(needs[n])
    }
    args.providers = [n for n in args.providers if n not in args.skipped]
    return args


def skip_numba_if_unavailable(args) -> str | None:
    """Move the numba providers to ``args.skipped`` when the kernels cannot run here; returns
    numba's version when they can (None when no numba provider was asked for)."""
    names = [n for n in args.providers if n.startswith("numba")]
    if not names:
        return None
    from . import _dispatch

    if _dispatch.numba_kernels() is None:
        args.skipped.update(
            dict.fromkeys(names, f"the numba kernels cannot run: {_dispatch.unavailable()}")
        )
        args.providers = [n for n in args.providers if n not in names]
        return None
    import numba

    return numba.__version__


def set_threads(n: int) -> None:
    """Pin the process to n CPUs and size every pool to n (before torch/jax are imported)."""
    if hasattr(os, "sched_setaffinity") and n < len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def repeats_for(n: int, c: int, quick: bool) -> int:
    size = n * c
    if size <= 10_000:
        r = 200
    elif size <= 1_000_000:
        r = 30
    elif size <= 20_000_000:
        r = 10
    else:
        r = 5
    return max(3, r // 3) if quick else r


# ----------------------------------------------------------------------------------------------
# memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_peak_extra(fn) -> float | None:
    """Bytes of resident memory that one call of fn adds at its peak (Linux), else None."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark VmHWM to the current RSS
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before) * 1024.0


def tracemalloc_peak_extra(fn) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return float(max(0, peak - base))


# ----------------------------------------------------------------------------------------------
# providers: make(name, x, t) -> {mode: (setup, timed)}; setup() runs untimed before each
# timed() call and returns its argument (or None).


def make_providers(names, x, t):
    import numpy as np

    n = x.shape[0]
    out = {}

    def none():
        return None

    if any(p.startswith("numba") or p == "numpy" for p in names):
        import softmaxce

    if "numba_inplace" in names:
        # in place: the gradient overwrites the buffer; running again on it is the same work
        # (the kernel's cost does not depend on the values), so the buffer is not refreshed
        buf = x.copy()
        out["numba_inplace"] = {
            "forward": (
                none,
                lambda _: softmaxce.softmax_cross_entropy(buf, t, backend="numba"),
            ),
            "full": (
                none,
                lambda _: softmaxce.softmax_cross_entropy_with_grad(
                    buf, t, inplace=True, backend="numba"
                ),
            ),
        }
    if "numba" in names:
        out["numba"] = {
            "forward": (none, lambda _: softmaxce.softmax_cross_entropy(x, t, backend="numba")),
            "full": (
                none,
                lambda _: softmaxce.softmax_cross_entropy_with_grad(x, t, backend="numba"),
            ),
        }
    if "numpy" in names:
        out["numpy"] = {
            "forward": (none, lambda _: softmaxce.softmax_cross_entropy(x, t, backend="numpy")),
            "full": (
                none,
                lambda _: softmaxce.softmax_cross_entropy_with_grad(x, t, backend="numpy"),
            ),
        }
    if "numpy_plain" in names:
        rows = np.arange(n)

        def plain_forward(_=None):
            e = np.exp(x - x.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
            return -np.log(p[rows, t]).mean(), p

        def plain_backward(p):
            g = p.copy()
            g[rows, t] -= 1.0
            g /= n
            return g

        out["numpy_plain"] = {
            "forward": (none, plain_forward),
            "backward": (lambda: plain_forward()[1], plain_backward),
            "full": (none, lambda _: plain_backward(plain_forward()[1])),
        }
    if "torch" in names or "torch_compile" in names:
        import torch
        import torch.nn.functional as F

        xt = torch.from_numpy(x)
        tt = torch.from_numpy(t)

        def torch_modes(fn):
            def fwd(_=None):
                leaf = xt.detach().requires_grad_(True)
                return fn(leaf, tt), leaf

            def bwd(saved):
                loss, leaf = saved
                loss.backward()
                return leaf.grad

            return {
                "forward": (none, fwd),
                "backward": (fwd, bwd),
                "full": (none, lambda _: bwd(fwd())),
            }

        if "torch" in names:
            out["torch"] = torch_modes(F.cross_entropy)
        if "torch_compile" in names:
            compiled = torch.compile(F.cross_entropy, dynamic=False)
            out["torch_compile"] = torch_modes(compiled)
    if "jax" in names:
        import jax
        import jax.numpy as jnp
        import optax

        def loss_fn(logits, labels):
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        f_loss = jax.jit(loss_fn)
        f_both = jax.jit(jax.value_and_grad(loss_fn))
        xj = jnp.asarray(x)
        tj = jnp.asarray(t.astype(np.int32))
        out["jax"] = {
            "forward": (none, lambda _: f_loss(xj, tj).block_until_ready()),
            "full": (none, lambda _: jax.block_until_ready(f_both(xj, tj))),
        }
    for name, backend in (("jax_ffi", "ffi"), ("jax_xla", "xla")):
        if name in names:
            out[name] = _softmaxce_jax(x, t, backend)
    if "copy" in names:
        dst = np.empty_like(x)
        copy = (none, lambda _: np.copyto(dst, x))
        out["copy"] = {"forward": copy, "backward": copy, "full": copy}
    return out


def _softmaxce_jax(x, t, backend):
    """softmaxce.jax's provider: the loss alone and jit(value_and_grad) of it."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import softmaxce.jax as scj

    def loss_fn(logits, labels):
        return scj.softmax_cross_entropy(logits, labels, backend=backend)

    f_loss = jax.jit(loss_fn)
    f_both = jax.jit(jax.value_and_grad(loss_fn))
    xj, tj = jnp.asarray(x), jnp.asarray(t.astype(np.int32))
    return {
        "forward": (lambda: None, lambda _: f_loss(xj, tj).block_until_ready()),
        "full": (lambda: None, lambda _: jax.block_until_ready(f_both(xj, tj))),
    }


def jax_ratios(rows, log) -> None:
    """optax's median over softmaxce.jax's, per size and mode (``--jax``)."""
    med = {(r["N"], r["C"], r["provider"], r["mode"]): r["median_ms"] for r in rows}
    for (n, c, prov, mode), ms in med.items():
        ref = med.get((n, c, "jax", mode))
        if prov in ("jax_ffi", "jax_xla") and ref:
            log(f"{n}x{c} {mode}: optax / softmaxce.jax ({prov}) = {ref / ms:.2f}")


MEM_TRACEMALLOC = {"numba_inplace", "numba", "numpy", "numpy_plain", "copy"}


# ----------------------------------------------------------------------------------------------


def percentile(values, q):
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def bench_size(n, c, args, log):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c), dtype=np.float32)
    t = rng.integers(0, c, n).astype(np.int64)
    provs = make_providers(args.providers, x, t)
    cases = [
        (p, m, provs[p][m]) for p in args.providers for m in args.modes if m in provs.get(p, {})
    ]
    # warm up (compiles: numba, torch.compile, jax.jit)
    for p, m, (setup, timed) in cases:
        t0 = time.perf_counter()
        for _ in range(2):
            timed(setup())
        dt = time.perf_counter() - t0
        if dt > 5:
            log(f"  warm-up {p}/{m}: {dt:.1f} s")
    reps = args.repeats or repeats_for(n, c, args.quick)
    times = {(p, m): [] for p, m, _ in cases}
    order = random.Random(0)
    pause = 0.05 if n * c >= 1_000_000 else 0.0
    for _ in range(reps):
        # a new order each round, and for large sizes a short pause before each call: thread
        # pools that spin after their work (OpenMP, XLA) must not bill the next provider
        for p, m, (setup, timed) in order.sample(cases, len(cases)):
            arg = setup()
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            timed(arg)
            times[(p, m)].append(time.perf_counter() - t0)
            del arg
    mem = {}
    for p, m, (setup, timed) in cases:
        arg = setup()
        if p in MEM_TRACEMALLOC:
            mem[(p, m)] = (tracemalloc_peak_extra(lambda a=arg, f=timed: f(a)), "tracemalloc")
        else:
            mem[(p, m)] = (rss_peak_extra(lambda a=arg, f=timed: f(a)), "rss-hwm")
        del arg
    rows = []
    for p, m, _ in cases:
        ts = times[(p, m)]
        med = percentile(ts, 50)
        ref = times.get(("torch", m))
        floor = times.get(("copy", m))
        peak, how = mem[(p, m)]
        rows.append(
            {
                "N": n,
                "C": c,
                "provider": p,
                "mode": m,
                "median_ms": med * 1e3,
                "p20_ms": percentile(ts, 20) * 1e3,
                "p80_ms": percentile(ts, 80) * 1e3,
                "repeats": len(ts),
                "torch_over_this": (percentile(ref, 50) / med) if ref else None,
                "this_over_copy": (med / percentile(floor, 50)) if floor else None,
                "peak_extra_MB": None if peak is None else peak / 2**20,
                "peak_extra_pct_of_logits": None if peak is None else 100.0 * peak / x.nbytes,
                "memory_method": how,
            }
        )
    return rows


def fmt(v, spec):
    return "" if v is None else format(v, spec)


def print_table(rows, header, log):
    log(header)
    cols = (
        f"{'N x C':>13} {'provider':<14} {'mode':<8} {'median ms':>10} {'p20':>9} {'p80':>9} "
        f"{'torch/this':>10} {'this/copy':>9} {'extra MB':>9} {'% logits':>8}"
    )
    log(cols)
    log("-" * len(cols))
    for r in rows:
        log(
            f"{r['N']:>6}x{r['C']:<6} {r['provider']:<14} {r['mode']:<8} "
            f"{r['median_ms']:>10.3f} {r['p20_ms']:>9.3f} {r['p80_ms']:>9.3f} "
            f"{fmt(r['torch_over_this'], '>10.2f')} {fmt(r['this_over_copy'], '>9.2f')} "
            f"{fmt(r['peak_extra_MB'], '>9.2f')} {fmt(r['peak_extra_pct_of_logits'], '>8.2f')}"
        )


def plot(rows, path, header):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sizes = sorted({(r["N"], r["C"]) for r in rows}, key=lambda s: s[0] * s[1])
    modes = [m for m in ALL_MODES if any(r["mode"] == m for r in rows)]
    provs = [p for p in ALL_PROVIDERS if any(r["provider"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.8), squeeze=False)
    width = 0.8 / max(1, len(provs))
    for ax, mode in zip(axes[0], modes, strict=True):
        for k, p in enumerate(provs):
            vals, errs = [], []
            for s in sizes:
                r = next(
                    (r for r in rows if (r["N"], r["C"]) == s and r["provider"] == p
                     and r["mode"] == mode),
                    None,
                )  # fmt: skip
                vals.append(np.nan if r is None else r["median_ms"])
                errs.append(
                    (0, 0) if r is None else (r["median_ms"] - r["p20_ms"],
                                              r["p80_ms"] - r["median_ms"])
                )  # fmt: skip
            xs = np.arange(len(sizes)) + (k - (len(provs) - 1) / 2) * width
            ax.bar(xs, vals, width, yerr=np.array(errs).T, label=p, capsize=2)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(sizes)), [f"{n}x{c}" for n, c in sizes])
        ax.set_title(f"{mode}")
        ax.set_ylabel("median wall time [ms] (log)")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    import textwrap

    width = 60 * len(modes) + 40  # characters that fit across the figure at this font size
    fig.suptitle(textwrap.fill(header, width), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _linear_mode(argv) -> bool:
    """``--modes linear``: the fused linear + cross-entropy benchmark (``_bench_linear``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pairs = zip(argv, [*argv[1:], ""], strict=True)
    return any(a == "--modes=linear" or (a == "--modes" and b == "linear") for a, b in pairs)


def main(argv=None, prog=None):
    if _linear_mode(argv):
        from . import _bench_linear

        return _bench_linear.main(argv, prog)
    args = parse_args(argv, prog)
    set_threads(args.threads)

    import numpy as np

    versions = [f"numpy {np.__version__}"]
    numba_version = skip_numba_if_unavailable(args)
    if numba_version is not None:
        versions.append(f"numba {numba_version}")
    if "torch" in args.providers or "torch_compile" in args.providers:
        import torch

        torch.set_num_threads(args.threads)
        try:
            torch.set_num_interop_threads(args.threads)
        except RuntimeError:
            pass
        versions.append(f"torch {torch.__version__}")
    if {"jax", "jax_ffi", "jax_xla"} & set(args.providers):
        import jax
        import optax

        versions.append(f"jax {jax.__version__} optax {optax.__version__}")
    import softmaxce

    versions.append(f"softmaxce {softmaxce.__version__}")
    if args.prefault_gb > 0:
        chunk = np.empty(int(args.prefault_gb * 2**30) // 8, dtype=np.float64)
        chunk.fill(1.0)  # touch every page once
        del chunk

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    header = (
        f"float32, mean reduction; threads: {args.threads} for numba, torch (intra+inter-op), "
        f"XLA (CPU pool = usable CPUs); {platform.processor() or platform.machine()}"
        f", {os.cpu_count()} CPUs; " + ", ".join(versions)
    )
    log(header)
    for why in dict.fromkeys(args.skipped.values()):
        names = ", ".join(n for n, w in args.skipped.items() if w == why)
        log(f"skipped {names}: {why}")
    if not args.providers:
        log("nothing to run: every provider asked for was skipped")
        return 1
    rows = []
    t_start = time.perf_counter()
    for k, (n, c) in enumerate(args.sizes, 1):
        log(f"[{k}/{len(args.sizes)}] size {n} x {c} ...")
        t_size = time.perf_counter()
        rows.extend(bench_size(n, c, args, log))
        log(f"[{k}/{len(args.sizes)}] size {n} x {c} done in {time.perf_counter() - t_size:.1f} s")
    log(f"total {time.perf_counter() - t_start:.0f} s")
    log()
    print_table(rows, header, log)
    jax_ratios(rows, log)
    with open(out / "fused.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "fused.txt").write_text("\n".join(lines) + "\n")
    if not args.no_plot:
        plot(rows, out / "fused.png", header)
    log(f"wrote {out / 'fused.csv'}, {out / 'fused.txt'}" + ("" if args.no_plot else ", fused.png"))
    return 0
