"""Fused linear + cross-entropy on the CPU: softmaxce against PyTorch, forward + backward.

    softmaxce bench --modes linear [--sizes 2048x1024x32000] [--providers ...] [--threads 2]
                    [--rounds 3] [--steps 3] [--out DIR]

(``python benchmarks/bench_linear.py`` runs the same, writing into benchmarks/results/.)
Sizes are ``N x D x V`` (tokens, features, classes), float32, integer labels, mean reduction,
no bias. Providers, each a forward and backward step (``loss.backward()``) of ``input`` (N, D)
and ``linear_weight`` (V, D) that require grad:

* ``softmaxce``        softmaxce.torch.linear_cross_entropy (blocked, fused)
* ``softmaxce_numpy``  softmaxce.linear_cross_entropy_with_grad on NumPy arrays
* ``unfused``          F.cross_entropy(F.linear(input, W), target)
* ``torch_ref``        F.linear_cross_entropy(input, W, target) (its reference path)
* ``torch_chunked``    the same with options=torch.nn.LinearCrossEntropyOptions()
* ``floor``            the three matrix products alone, under no_grad: logits = x @ W.T,
                       logits @ W, logits.T @ x

Each provider runs in a fresh process (``--worker``), pinned to ``--threads`` CPUs with every
pool (OpenMP, MKL, OpenBLAS, numba) of that size; ``--rounds`` rounds run every provider once
each, in a new random order per round, so that load from other processes hits them alike. A
process warms up (one step of a small problem: imports, numba's compile; then one at full
size unless ``--steps 0``), runs one step at full size to measure its memory, then times
``--steps`` steps (0: the memory step is timed, and measured cold), each after a 50 ms
pause (pools that spin after their work do not bill the next provider); the table gives the
median over every step of every round. Memory: the peak resident memory of
one step beyond what the process held before it (inputs, caches; gradients set to None before
the step, as ``zero_grad()`` does), minus the gradients themselves (Linux ``VmHWM``, reset
through ``/proc/self/clear_refs``; glibc's mmap threshold is fixed at 128 KiB so that freed
blocks leave the resident set).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ALL_PROVIDERS = ["softmaxce", "softmaxce_numpy", "unfused", "torch_ref", "torch_chunked", "floor"]
DEFAULT_SIZES = [(2048, 1024, 32000)]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def parse_args(argv=None, prog=None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--modes", default="linear", help="linear (this benchmark)")
    p.add_argument("--sizes", help="comma-separated NxDxV, e.g. 2048x1024x32000")
    p.add_argument("--providers", help="comma-separated subset of " + ",".join(ALL_PROVIDERS))
    p.add_argument("--threads", type=int, default=2, help="threads for every provider (2)")
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per provider (3)")
    p.add_argument(
        "--steps",
        type=int,
        default=3,
        help="timed steps per process after the first (3; 0: "
        "time the first, which measures the memory)",
    )
    p.add_argument("--out", default="benchmarks/results", help="folder for CSV, table, plot")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.sizes = (
            [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
            if args.sizes
            else DEFAULT_SIZES
        )
    except ValueError:
        p.error(f"--sizes: expected NxDxV triples such as 2048x1024x32000, got {args.sizes!r}")
    if any(len(s) != 3 or min(s) < 1 for s in args.sizes):
        p.error(f"--sizes: expected positive NxDxV triples, got {args.sizes!r}")
    args.providers = args.providers.split(",") if args.providers else list(ALL_PROVIDERS)
    for name in args.providers:
        if name not in ALL_PROVIDERS:
            p.error(f"--providers: unknown provider {name!r}; choose from {ALL_PROVIDERS}")
    for name in ("threads", "rounds", "steps"):
        if getattr(args, name) < (0 if name == "steps" else 1):
            p.error(f"--{name}: expected a positive integer, got {getattr(args, name)}")
    return args


# ----------------------------------------------------------------------------------------------
# the worker: one provider, one size, in its own process


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    msg = f"no {field} in /proc/self/status"
    raise OSError(msg)


def _peak_extra(step) -> float | None:
    """Bytes of resident memory one call of ``step`` adds at its peak (Linux), else None."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the high-water mark VmHWM back to the current RSS
        before = _status_kib("VmRSS")
    except OSError:
        return None
    step()
    return max(0, _status_kib("VmHWM") - before) * 1024.0


def _step_of(name: str, n: int, d: int, v: int):
    """``(step, gradient bytes, zero_grad)`` of one provider."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g).requires_grad_()
    w = (torch.randn(v, d, generator=g) / d**0.5).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    grad_bytes = (n * d + v * d) * 4

    def zero_grad():
        x.grad = w.grad = None

    def backward_of(loss_fn):
        def step():
            x.grad = w.grad = None
            loss_fn().backward()

        return step

    if name == "softmaxce":
        import softmaxce.torch as sct

        return backward_of(lambda: sct.linear_cross_entropy(x, w, t)), grad_bytes, zero_grad
    if name == "softmaxce_numpy":
        import softmaxce

        xn, wn, tn = x.detach().numpy(), w.detach().numpy(), t.numpy()
        return (
            (lambda: softmaxce.linear_cross_entropy_with_grad(xn, wn, tn)),
            grad_bytes,
            gc.collect,
        )
    if name == "unfused":
        return backward_of(lambda: F.cross_entropy(F.linear(x, w), t)), grad_bytes, zero_grad
    if name == "torch_ref":
        return backward_of(lambda: F.linear_cross_entropy(x, w, t)), grad_bytes, zero_grad
    if name == "torch_chunked":
        opts = torch.nn.LinearCrossEntropyOptions()
        return (
            backward_of(lambda: F.linear_cross_entropy(x, w, t, options=opts)),
            grad_bytes,
            zero_grad,
        )

    def floor():
        with torch.no_grad():
            logits = x @ w.t()
            logits @ w
            logits.t() @ x

    return floor, 0, gc.collect


def worker(spec: str) -> None:
    """``--worker name,N,D,V,steps,threads``: prints one JSON line."""
    name, n, d, v, steps, threads = spec.split(",")
    n, d, v, steps, threads = int(n), int(d), int(v), int(steps), int(threads)
    import torch

    torch.set_num_threads(threads)
    _step_of(name, min(n, 64), min(d, 64), min(v, 256))[0]()  # warm-up: imports, compiles
    step, grad_bytes, zero_grad = _step_of(name, n, d, v)
    if steps:  # one step at full size, untimed (pools, BLAS buffers), its gradients dropped
        step()
        zero_grad()
    t0 = time.perf_counter()
    peak = _peak_extra(step)  # its memory (and, with --steps 0, its time)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        time.sleep(0.05)
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    extra = None if peak is None else max(0.0, peak - grad_bytes)
    print(json.dumps({"times": times or [first], "extra_bytes": extra}), flush=True)


# ----------------------------------------------------------------------------------------------
# the parent: rounds of fresh processes, the table, the CSV, the plot


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(dict.fromkeys(THREAD_VARS, str(threads)))
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # freed large blocks leave the resident set
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_worker(name, size, args) -> dict:
    cmd = [sys.executable, "-m", "softmaxce._bench_linear", "--worker",
           ",".join(map(str, (name, *size, args.steps, args.threads)))]  # fmt: skip
    if hasattr(os, "sched_getaffinity"):
        cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))[: args.threads]))
        cmd = ["taskset", "-c", cpus, *cmd] if _has_taskset() else cmd
    done = subprocess.run(cmd, env=_env(args.threads), capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _has_taskset() -> bool:
    from shutil import which

    return which("taskset") is not None


def bench(args, log) -> list[dict]:
    rows = []
    for size in args.sizes:
        n, d, v = size
        results: dict[str, dict] = {p: {"times": [], "extra": []} for p in args.providers}
        for r in range(args.rounds):
            order = random.sample(args.providers, len(args.providers))
            for name in order:
                res = _run_worker(name, size, args)
                if "error" in res:
                    log(f"  {name}: failed: {res['error']}")
                    results[name].setdefault("error", res["error"])
                    continue
                results[name]["times"] += res["times"]
                if res["extra_bytes"] is not None:
                    results[name]["extra"].append(res["extra_bytes"])
                log(f"  round {r + 1} {name}: " + ", ".join(f"{s:.2f}" for s in res["times"]))
        logits_mb = n * v * 4 / 1e6
        floor = (
            statistics.median(results["floor"]["times"])
            if results.get("floor", {}).get("times")
            else None
        )
        for name in args.providers:
            res = results[name]
            if not res["times"]:
                continue
            med = statistics.median(res["times"])
            extra = statistics.median(res["extra"]) / 1e6 if res["extra"] else None
            rows.append({
                "N": n, "D": d, "V": v, "provider": name, "median_s": round(med, 4),
                "min_s": round(min(res["times"]), 4), "samples": len(res["times"]),
                "x_floor": None if floor is None else round(med / floor, 3),
                "extra_MB": None if extra is None else round(extra, 1),
                "extra_pct_logits": None if extra is None else round(100 * extra / logits_mb, 1),
            })  # fmt: skip
    return rows


def print_table(rows, header, log) -> None:
    log(header)
    cols = ["N", "D", "V", "provider", "median_s", "min_s", "samples", "x_floor", "extra_MB",
            "extra_pct_logits"]  # fmt: skip
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    log("  ".join(c.rjust(width[c]) for c in cols))
    for r in rows:
        log("  ".join(str(r[c]).rjust(width[c]) for c in cols))


def plot(rows, path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['provider']}\n{r['N']}x{r['D']}x{r['V']}" for r in rows]
    a.bar(labels, [r["median_s"] for r in rows], color="tab:blue")
    a.set_ylabel("forward + backward, median (s)")
    b.bar(labels, [r["extra_MB"] or 0 for r in rows], color="tab:orange")
    b.set_ylabel("peak memory beyond inputs and gradients (MB)")
    for ax in (a, b):
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None, prog=None) -> int:
    args = parse_args(argv, prog)
    if args.worker:
        worker(args.worker)
        return 0
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    header = (
        f"linear + cross-entropy, float32, mean, forward+backward; {args.threads} threads for "
        f"every pool; {args.rounds} fresh processes x {args.steps} steps per provider; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"torch {torch.__version__}; load average at start {os.getloadavg()[0]:.1f}"
    )
    log(header)
    rows = bench(args, log)
    if not rows:
        log("nothing ran")
        return 1
    log(f"load average at the end {os.getloadavg()[0]:.1f}")
    print_table(rows, header, log)
    with open(out / "linear.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "linear.txt").write_text("\n".join(lines) + "\n")
    if not args.no_plot:
        plot(rows, out / "linear.png")
    log(
        f"wrote {out / 'linear.csv'}, {out / 'linear.txt'}"
        + ("" if args.no_plot else ", linear.png")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
