"""Fused softmax cross-entropy on the CPU: softmaxce against NumPy, PyTorch and JAX.

    softmaxce bench [--quick] [--sizes 64x10,4096x32000] [--providers ...]
                    [--modes forward,backward,full] [--threads N] [--repeats N] [--out DIR]

(``python benchmarks/bench_fused.py`` runs the same, writing into benchmarks/results/.) This
module is the benchmark harness; it lives in the package only so that the ``softmaxce bench``
command can run it. Nothing in the library imports it, and the test suite times nothing.

Providers (float32 logits (N, C), int64 labels, mean reduction; the table, plot and
``fused.md`` name them as the README does, ``LABELS``):

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
providers where it is a separate step: numpy_plain, torch, torch_compile; for the others one
line says so), ``full`` (loss and gradient). ``copy`` is listed under every mode.

Timing: every provider is warmed up (compiles excluded), then ``repeats`` rounds run every
(provider, mode) once per round, interleaved in a new random order each round, so that load
from other processes hits all of them alike; for sizes of 1M elements or more each call is
preceded by a 50 ms pause, so that thread pools that spin after their work (OpenMP, XLA) do
not bill the next provider. Reported: median and the 20th/80th percentiles of the wall time,
and the ratios of the medians against ``torch`` (same mode) and against ``copy``.

Noise: the memory copy does the same work every round, so the spread of its times (p80 / p20,
per size; the copy is timed even when not asked for) measures what other processes do to the
figures. Above 1.5 the command warns that the figures are not trustworthy; it also warns when
``--threads`` exceeds the CPUs free at the start (the usable CPUs less the 1-minute load
average), where multi-threaded providers can run hundreds of times too slow.

Threads: numba, PyTorch (intra- and inter-op) and the OpenMP/BLAS pools are set to
``--threads`` (default: the CPUs free at the start, printed in the header); XLA's CPU pool is
sized from the CPUs the process may use, so when ``--threads`` is below the CPU count the
process is pinned to that many CPUs (os.sched_setaffinity). The allocator is left at its
defaults, so that out-of-place providers pay what they pay in real use. Before measuring,
``--prefault-gb`` GB are allocated, touched and freed once (default: 8 times the largest
size's logits, what the providers may hold at once, at most half the available memory; none
below 64 MB): in a virtual machine the first touch of a guest page can cost a host-side fault
(measured here: a fresh 500 MB buffer took 830 ms to fill the first time, 85 ms afterwards),
which would otherwise land at random on whichever provider allocates first.

Peak extra memory, beyond the inputs, of one (untimed) call:
* NumPy/numba providers: tracemalloc's peak (NumPy reports its array buffers to tracemalloc;
  the numba kernels allocate no arrays inside);
* torch/jax: the resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs)
  minus the RSS before the call (Linux only; elsewhere the column is empty). glibc maps
  buffers above 32 MiB afresh on each allocation, so the large sizes are measured exactly;
  smaller buffers may reuse freed heap pages and read low.

``--jax`` is the JAX comparison: sizes 4096x32000, providers jax_ffi, jax_xla,
jax (optax) and copy, mode full (unless given), and the ratios optax / softmaxce.jax printed
after the table.

Writes ``fused.csv``, ``fused.md`` (the README's speed table), ``fused.txt`` (the printed
output) and ``fused.png`` into ``--out`` (default ./softmaxce-bench; the full path is printed)
and prints a table. The default full run takes about 5 to 8 minutes on 2 cores; ``--quick``
(sizes up to 1024 x 8000, fewer rounds) about a minute. What cannot run is skipped with one
line saying why, never a traceback: torch, jax or optax not installed, the numba kernels
unavailable (numba not installed, ``NUMBA_DISABLE_JIT=1``), a mode a provider does not have,
a case that fails (its exception in one line). The process's CPU affinity and thread variables
are restored when ``main`` returns.
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
# the names the README's speed table uses (and the plot's legend)
LABELS = {
    "numba_inplace": "softmaxce numba, in place",
    "numba": "softmaxce numba, out of place",
    "numpy": "softmaxce NumPy core",
    "numpy_plain": "NumPy as tutorials write it",
    "torch": "PyTorch eager F.cross_entropy",
    "torch_compile": "torch.compile",
    "jax": "JAX jit(value_and_grad(optax))",
    "jax_ffi": "softmaxce.jax, FFI kernel",
    "jax_xla": "softmaxce.jax, core under XLA",
    "copy": "memory copy of the logits",
}
# why a provider lacks a mode (make_providers offers no such case)
NOT_OFFERED = {
    "backward": "no separate backward step (one call gives the loss and the gradient: see full)",
}
NOISE_PROBE = "noise probe"  # the copy floor, timed for the noise figure when not asked for
NOISY = 1.5  # a copy floor spread (p80 / p20) above this makes the figures untrustworthy
DEFAULT_OUT = "softmaxce-bench"
DEFAULT_SIZES = [(64, 10), (512, 1000), (4096, 32000), (512, 256000)]
QUICK_SIZES = [(64, 10), (512, 1000), (1024, 8000)]


EXAMPLES = """examples:
  softmaxce bench --quick
  softmaxce bench --sizes 4096x32000 --providers numba_inplace,numba,torch,copy --modes full
  softmaxce bench --out results/ --no-plot --threads 1"""


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
    p.add_argument(
        "--threads",
        type=int,
        help="threads for every provider (default: the CPUs that are free now: usable CPUs "
        "minus the load average)",
    )
    p.add_argument("--repeats", type=int, help="rounds per size (default: by size)")
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"folder for CSV, table, plot (created; default ./{DEFAULT_OUT})",
    )
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument(
        "--jax", action="store_true", help="softmaxce.jax (FFI kernel, core) against optax"
    )
    p.add_argument(
        "--prefault-gb",
        type=float,
        default=None,
        help="touch this much fresh memory once before measuring (default: 8 times the "
        "largest logits, at most half the available memory)",
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
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads: expected a positive integer, got {args.threads}")
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats: expected a positive integer, got {args.repeats}")
    if args.prefault_gb is None:
        args.prefault_gb = default_prefault_gb(args.sizes)
    elif args.prefault_gb < 0:
        p.error(f"--prefault-gb: expected a number >= 0, got {args.prefault_gb}")
    args.providers = args.providers.split(",") if args.providers else list(ALL_PROVIDERS)
    args.modes = args.modes.split(",") if args.modes else list(ALL_MODES)
    for name in args.providers:
        if name not in ALL_PROVIDERS:
            p.error(f"--providers: unknown provider {name!r}; choose from {ALL_PROVIDERS}")
    for name in args.modes:
        if name not in ALL_MODES:
            p.error(f"--modes: unknown mode {name!r}; choose from {ALL_MODES}")
    needs = {"torch": ["torch"], "torch_compile": ["torch"], "jax": ["jax", "optax"]}
    needs.update(jax_ffi=["jax"], jax_xla=["jax"])
    # provider -> why it cannot run; numba's providers are checked in main(), after the
    # thread settings (numba reads NUMBA_NUM_THREADS when it is imported)
    args.skipped = {}
    for n in args.providers:
        missing = [m for m in needs.get(n, []) if not _available(m)]
        if missing:
            args.skipped[n] = f"{' and '.join(missing)} not installed"
    args.providers = [n for n in args.providers if n not in args.skipped]
    return args


def default_prefault_gb(sizes) -> float:
    """GB of fresh memory to touch once before measuring: what the providers of the largest
    size may hold at once (the logits, three copies of them for the in-place, copy and JAX
    buffers, and up to three more inside a call: PyTorch's loss and gradient), at most half
    of the memory available now."""
    need = 8 * 4 * max(n * c for n, c in sizes) / 2**30  # float32 logits
    if need < 1 / 16:
        return 0.0  # small buffers come from pages the process already has
    avail = _meminfo_kib("MemAvailable")
    return need if avail is None else min(need, avail / 2**20 / 2)


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def free_cpus() -> tuple[int, float | None]:
    """(CPUs free now, the 1-minute load average): the usable CPUs less the load (at least 1)."""
    usable = usable_cpus()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return usable, None
    return max(1, min(usable, (os.cpu_count() or usable) - int(load))), load


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


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def set_threads(n: int) -> None:
    """Pin the process to n CPUs and size every pool to n (before torch/jax are imported)."""
    if hasattr(os, "sched_setaffinity") and n < len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])
    for var in THREAD_VARS:
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


def _meminfo_kib(field: str) -> int | None:
    return _status_kib(field, "/proc/meminfo")


def _status_kib(field: str, path: str = "/proc/self/status") -> int | None:
    try:
        with open(path) as f:
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


def _none():
    return None


def make_providers(names, x, t):
    """provider -> {mode: (setup, step)} for the chosen provider names, on logits ``x`` and
    labels ``t`` (``step`` takes what ``setup`` returns)."""
    out = _softmaxce_providers(names, x, t)
    if "numpy_plain" in names:
        out["numpy_plain"] = _plain_numpy(x, t)
    if "torch" in names or "torch_compile" in names:
        out.update(_torch_providers(names, x, t))
    if "jax" in names:
        out["jax"] = _optax(x, t)
    for name, backend in (("jax_ffi", "ffi"), ("jax_xla", "xla")):
        if name in names:
            out[name] = _softmaxce_jax(x, t, backend)
    if "copy" in names:
        import numpy as np

        dst = np.empty_like(x)
        copy = (_none, lambda _: np.copyto(dst, x))
        out["copy"] = {"forward": copy, "backward": copy, "full": copy}
    return out


def _softmaxce_providers(names, x, t):
    """numba in place, numba and the NumPy core: one call gives the loss and the gradient."""
    import softmaxce

    out = {}
    if "numba_inplace" in names:
        # in place: the gradient overwrites the buffer; running again on it is the same work
        # (the kernel's cost does not depend on the values), so the buffer is not refreshed
        buf = x.copy()
        out["numba_inplace"] = {
            "forward": (_none, lambda _: softmaxce.softmax_cross_entropy(buf, t, backend="numba")),
            "full": (
                _none,
                lambda _: softmaxce.softmax_cross_entropy_with_grad(
                    buf, t, inplace=True, backend="numba"
                ),
            ),
        }
    for name in ("numba", "numpy"):
        if name in names:
            out[name] = {
                "forward": (
                    _none,
                    lambda _, b=name: softmaxce.softmax_cross_entropy(x, t, backend=b),
                ),
                "full": (
                    _none,
                    lambda _, b=name: softmaxce.softmax_cross_entropy_with_grad(x, t, backend=b),
                ),
            }
    return out


def _plain_numpy(x, t):
    """The formula as tutorials write it."""
    import numpy as np

    n = x.shape[0]
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

    return {
        "forward": (_none, plain_forward),
        "backward": (lambda: plain_forward()[1], plain_backward),
        "full": (_none, lambda _: plain_backward(plain_forward()[1])),
    }


def _torch_providers(names, x, t):
    """F.cross_entropy eager and under torch.compile, with autograd."""
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
            "forward": (_none, fwd),
            "backward": (fwd, bwd),
            "full": (_none, lambda _: bwd(fwd())),
        }

    out = {}
    if "torch" in names:
        out["torch"] = torch_modes(F.cross_entropy)
    if "torch_compile" in names:
        out["torch_compile"] = torch_modes(torch.compile(F.cross_entropy, dynamic=False))
    return out


def _optax(x, t):
    """optax's integer-label loss under jax.jit, and its value_and_grad."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    def loss_fn(logits, labels):
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    f_loss = jax.jit(loss_fn)
    f_both = jax.jit(jax.value_and_grad(loss_fn))
    xj = jnp.asarray(x)
    tj = jnp.asarray(t.astype(np.int32))
    return {
        "forward": (_none, lambda _: f_loss(xj, tj).block_until_ready()),
        "full": (_none, lambda _: jax.block_until_ready(f_both(xj, tj))),
    }


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


def spread(values) -> float:
    """The machine's noise in one figure: p80 / p20 of repeated timings of the same work (1.0:
    none). Taken on the copy floor, whose work never changes."""
    return percentile(values, 80) / max(percentile(values, 20), 1e-12)


def bench_size(n, c, args, log):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c), dtype=np.float32)
    t = rng.integers(0, c, n).astype(np.int64)
    provs = make_providers(args.providers, x, t)
    cases = [
        (p, m, provs[p][m]) for p in args.providers for m in args.modes if m in provs.get(p, {})
    ]
    if not any(p == "copy" for p, _, _ in cases):  # the noise probe, timed but not reported
        dst = np.empty_like(x)
        cases.append(("copy", NOISE_PROBE, (lambda: None, lambda _: np.copyto(dst, x))))
    # warm up (compiles: numba, torch.compile, jax.jit); a case that fails is skipped
    for case in list(cases):
        p, m, (setup, timed) = case
        t0 = time.perf_counter()
        try:
            for _ in range(2):
                timed(setup())
        except Exception as exc:
            cases.remove(case)
            why = (str(exc).strip().splitlines() or [""])[0][:200]
            log(f"  skipped {p} {m} at {n} x {c}: it failed: {type(exc).__name__}: {why}")
            continue
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
    noise = spread([v for (p, _), ts in times.items() if p == "copy" for v in ts])
    cases = [case for case in cases if case[1] != NOISE_PROBE]
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
                "noise_copy_p80_over_p20": noise,
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


def _num(v: float) -> str:
    """Three significant digits, never in exponent form (1316, 53.6, 0.128, 0.00225)."""
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}" if v >= 0.001 else f"{v:.2e}" if v else "0"


def markdown_table(rows, header) -> str:
    """The README's speed table: one row per (size, mode, provider), the README's names."""
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    noise = dict.fromkeys(f"{r['noise_copy_p80_over_p20']:.2f}" for r in rows)
    lines = [
        f"{header}; noise (copy floor p80/p20 per size): {', '.join(noise)}",
        "",
        "| N x C |" + (" mode |" if len(modes) > 1 else "")
        + " provider | median ms | PyTorch eager / this | this / copy floor | extra memory |",
        "|---|" + ("---|" if len(modes) > 1 else "") + "---|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        mem = r["peak_extra_MB"]
        extra = "" if mem is None else f"{_num(mem)} MB ({_num(r['peak_extra_pct_of_logits'])}%)"
        lines.append(
            f"| {r['N']} x {r['C']} |" + (f" {r['mode']} |" if len(modes) > 1 else "")
            + f" {LABELS.get(r['provider'], r['provider'])} | {_num(r['median_ms'])} |"
            f" {fmt(r['torch_over_this'], '.2f')} | {fmt(r['this_over_copy'], '.2f')} |"
            f" {extra} |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows, path, header):
    import matplotlib

    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    sizes = sorted({(r["N"], r["C"]) for r in rows}, key=lambda s: s[0] * s[1])
    modes = [m for m in ALL_MODES if any(r["mode"] == m for r in rows)]
    modes += [m for m in dict.fromkeys(r["mode"] for r in rows) if m not in modes]
    provs = [p for p in ALL_PROVIDERS if any(r["provider"] == p for r in rows)]
    colour = {p: f"C{k}" for k, p in enumerate(provs)}  # one colour per provider in every panel
    by_key = {(r["N"], r["C"], r["provider"], r["mode"]): r for r in rows}
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 5.4), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        here = [p for p in provs if any(r["provider"] == p and r["mode"] == mode for r in rows)]
        width = 0.8 / max(1, len(here))
        for k, p in enumerate(here):
            got = [by_key.get((n, c, p, mode)) for n, c in sizes]
            vals = [np.nan if r is None else r["median_ms"] for r in got]
            errs = [
                (0, 0)
                if r is None
                else (r["median_ms"] - r["p20_ms"], r["p80_ms"] - r["median_ms"])
                for r in got
            ]
            xs = np.arange(len(sizes)) + (k - (len(here) - 1) / 2) * width
            ax.bar(xs, vals, width, yerr=np.array(errs).T, color=colour[p], capsize=2)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(sizes)), [f"{n}x{c}" for n, c in sizes])
        absent = [LABELS.get(p, p) for p in provs if p not in here]
        why = NOT_OFFERED.get(mode, "not offered").split(" (")[0]
        note = f"\nnot shown ({why}): {', '.join(absent)}" if absent else ""
        ax.set_title(textwrap.fill(f"{mode}{note}", 70), fontsize=9)
        ax.set_ylabel("median wall time [ms] (log); bars: p20-p80")
        ax.grid(axis="y", which="both", alpha=0.3)
    handles = [Patch(color=colour[p], label=LABELS.get(p, p)) for p in provs]
    ncol = min(len(provs), 2 * len(modes))  # two legend columns fit in each panel's width
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8)
    width = 60 * len(modes) + 40  # characters that fit across the figure at this font size
    fig.suptitle(textwrap.fill(header, width), fontsize=8)
    fig.tight_layout(rect=(0, 0.045 * (1 + (len(provs) - 1) // ncol), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def offered_modes(providers) -> dict[str, set[str]]:
    """provider -> the modes make_providers offers for it (built on a 2 x 3 problem: the
    compilers (torch.compile, jax.jit) are lazy, so nothing is compiled here)."""
    import numpy as np

    provs = make_providers(providers, np.zeros((2, 3), np.float32), np.zeros(2, np.int64))
    return {p: set(provs.get(p, {})) for p in providers}


def skip_modes_not_offered(args, log) -> None:
    """Drop the modes no provider offers; say once which (provider, mode) pairs cannot run."""
    offered = offered_modes(args.providers)
    for mode in args.modes:
        lacking = [p for p in args.providers if mode not in offered[p]]
        if lacking:
            why = NOT_OFFERED.get(mode, "not offered by these providers")
            log(f"skipped {mode} for {', '.join(lacking)}: {why}")
    args.modes = [m for m in args.modes if any(m in o for o in offered.values())]


def _linear_mode(argv) -> bool:
    """``--modes linear``: the fused linear + cross-entropy benchmark (``_bench_linear``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pairs = zip(argv, [*argv[1:], ""], strict=True)
    return any(a == "--modes=linear" or (a == "--modes" and b == "linear") for a, b in pairs)


def main(argv=None, prog=None):
    """The command; the process's CPU affinity and thread variables are restored afterwards,
    so that it can run inside another program (the tests)."""
    if _linear_mode(argv):
        from . import _bench_linear

        return _bench_linear.main(argv, prog)
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    env = {var: os.environ.get(var) for var in THREAD_VARS}
    try:
        return _main(argv, prog)
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
        for var, value in env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _library_versions(args) -> list[str]:
    """The versions of the libraries this run uses (numba's providers dropped where it cannot
    run; torch's thread pools set to ``args.threads``)."""
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
    return versions


def _warn_if_noisy(rows, log) -> None:
    """Say when the copy floor, whose work never changes, varied too much across rounds."""
    noisy = sorted({(r["N"], r["C"], r["noise_copy_p80_over_p20"]) for r in rows
                    if r["noise_copy_p80_over_p20"] > NOISY})  # fmt: skip
    if noisy:
        log(
            "warning: the figures are not trustworthy: the memory copy, whose work never "
            "changes, varied across rounds by "
            + ", ".join(f"{s:.2f}x at {n} x {c}" for n, c, s in noisy)
            + f" (p80/p20 above {NOISY}): other processes load this machine. Rerun when it is "
            "idle, or compare only figures from one run."
        )


def _main(argv=None, prog=None):
    args = parse_args(argv, prog)
    free, load = free_cpus()
    threads_note = "--threads" if args.threads else f"free now: {usable_cpus()} usable CPUs"
    if args.threads is None:
        args.threads = free
        if load is not None:
            threads_note += f", load average {load:.1f}"
    set_threads(args.threads)

    import numpy as np

    out = Path(args.out).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"{prog or 'bench'}: error: --out: cannot create {out}: {exc}", file=sys.stderr)
        return 2
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    versions = _library_versions(args)
    header = (
        f"float32, mean reduction; threads: {args.threads} ({threads_note}) for numba, torch "
        f"(intra+inter-op), XLA (CPU pool = usable CPUs); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        + ", ".join(versions)
    )
    log(header)
    log(f"output folder: {out}")
    for why in dict.fromkeys(args.skipped.values()):
        names = ", ".join(n for n, w in args.skipped.items() if w == why)
        log(f"skipped {names}: {why}")
    if args.providers:
        skip_modes_not_offered(args, log)
    if not args.providers or not args.modes:
        log("nothing to run: every provider or mode asked for was skipped")
        return 1
    if args.threads > free:
        log(
            f"warning: {args.threads} threads but only {free} CPU(s) free"
            + ("" if load is None else f" (load average {load:.1f})")
            + ": the threads compete with other processes; figures will be noisy, the "
            "multi-threaded ones most"
        )
    if args.prefault_gb > 0:
        log(f"prefault: touching {args.prefault_gb:.2f} GB of fresh memory once")
        chunk = np.empty(int(args.prefault_gb * 2**30) // 8, dtype=np.float64)
        chunk.fill(1.0)  # touch every page once
        del chunk

    rows = []
    t_start = time.perf_counter()
    for k, (n, c) in enumerate(args.sizes, 1):
        log(f"[{k}/{len(args.sizes)}] size {n} x {c} ...")
        t_size = time.perf_counter()
        size_rows = bench_size(n, c, args, log)
        rows.extend(size_rows)
        noise = size_rows[0]["noise_copy_p80_over_p20"] if size_rows else None
        log(
            f"[{k}/{len(args.sizes)}] size {n} x {c} done in {time.perf_counter() - t_size:.1f} s"
            + ("" if noise is None else f"; noise: copy floor p80/p20 = {noise:.2f}")
        )
    log(f"total {time.perf_counter() - t_start:.0f} s")
    if not rows:
        log("nothing was measured: every case failed (see above)")
        return 1
    log()
    print_table(rows, header, log)
    jax_ratios(rows, log)
    _warn_if_noisy(rows, log)
    files = [out / "fused.csv", out / "fused.md", out / "fused.txt"]
    with open(files[0], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    files[1].write_text(markdown_table(rows, header))
    if not args.no_plot:
        try:
            plot(rows, out / "fused.png", header)
        except ImportError:
            log("matplotlib is not installed: no plot written (pip install matplotlib)")
        else:
            files.append(out / "fused.png")
    log("wrote " + ", ".join(str(f) for f in files))
    (out / "fused.txt").write_text("\n".join(lines) + "\n")
    return 0
