"""Vocabulary-parallel cross-entropy against gathering everything, on CPU with gloo.

Two providers per mode, measured side by side in one run (rounds interleave them, so that
load from other processes hits both alike), each on world size ``P`` (default 2) with the
classes split evenly (``V / P`` per rank). ``--mode logits`` (the default):

* ``vocab_parallel``: ``softmaxce.distributed.vocab_parallel_cross_entropy`` of the local
  slice (one all-gather of the packed per-row statistics; a local backward);
* ``gather_logits``: all-gather the logits' slices into the full ``(N, V)`` logits on every
  rank, then the single-process ``softmaxce.torch.cross_entropy`` and its gradient, of which
  each rank keeps its slice.

``--mode linear`` (hidden states ``(N, D)`` on every rank, the weight's rows split):

* ``vocab_parallel_linear``: ``vocab_parallel_linear_cross_entropy`` of this rank's rows of
  the weight (one all-gather of the statistics forward, one all-reduce of ``dinput`` backward);
* ``gather_weight``: all-gather the weight's rows into the full ``(V, D)`` weight on every
  rank, then the single-process ``softmaxce.torch.linear_cross_entropy`` and its gradients
  (each rank keeps its rows of ``dW``; ``dinput`` is already the full one).

One measurement is forward + backward (``torch.autograd.grad`` of the loss with respect to the
local slice, or to the input and the weight's rows, fresh tensors made outside the timed
region), timed on every rank after a barrier; the slowest rank's time counts. Reported: the
median and quartiles, the bytes each rank receives from the collectives per step
(``P * N * k * 4`` for the statistics, ``k`` floats per row; ``N * V * 4`` for the logits;
``2 (P - 1) / P * N * D * 4`` more for a ring all-reduce of ``dinput``, ``V * D * 4`` for
the weight), and the peak memory a step adds to the process (the rise of its resident set's
high-water mark, Linux, with glibc returning every allocation of 64 KiB or more when it is
freed; the largest over the ranks and timed rounds).

    python benchmarks/bench_distributed.py [--mode logits|linear] [--rows N] [--classes V]
                                           [--dim D] [--world P] [--repeats R]

Defaults: N=4096, V=32000, D=1024, P=2, R=7; one torch thread per rank. Prints a table and
writes benchmarks/results/distributed.csv (distributed_linear.csv for the linear mode).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

RESULTS = Path(__file__).resolve().parent / "results"


def vocab_parallel(x, target, rank, world):
    from softmaxce.distributed import vocab_parallel_cross_entropy

    loss = vocab_parallel_cross_entropy(x, target)
    return loss, torch.autograd.grad(loss, x)[0]


def gather_logits(x, target, rank, world):
    import softmaxce.torch as sct

    n, v_r = x.shape
    parts = torch.empty(world * n, v_r, dtype=x.dtype)
    dist.all_gather_single(parts, x.detach().contiguous())
    full = parts.view(world, n, v_r).permute(1, 0, 2).reshape(n, world * v_r)
    full.requires_grad_()
    loss = sct.cross_entropy(full, target)
    grad = torch.autograd.grad(loss, full)[0]
    return loss, grad[:, rank * v_r : (rank + 1) * v_r]


def vocab_parallel_linear(x, w, target, rank, world):
    from softmaxce.distributed import vocab_parallel_linear_cross_entropy

    loss = vocab_parallel_linear_cross_entropy(x, w, target)
    return loss, torch.autograd.grad(loss, (x, w))


def gather_weight(x, w, target, rank, world):
    import softmaxce.torch as sct

    full = torch.empty(world * w.shape[0], w.shape[1], dtype=w.dtype)
    dist.all_gather_single(full, w.detach().contiguous())
    full.requires_grad_()
    loss = sct.linear_cross_entropy(x, full, target)
    dx, dw = torch.autograd.grad(loss, (x, full))
    v_r = w.shape[0]
    return loss, (dx, dw[rank * v_r : (rank + 1) * v_r])


PROVIDERS = {
    "logits": {"vocab_parallel": vocab_parallel, "gather_logits": gather_logits},
    "linear": {"vocab_parallel_linear": vocab_parallel_linear, "gather_weight": gather_weight},
}


def _bytes_received(name: str, n: int, v: int, d: int, world: int) -> int:
    """Bytes each rank receives from the collectives of a step (float32)."""
    if name == "gather_logits":
        return n * v * 4
    if name == "gather_weight":
        return v * d * 4
    from softmaxce._options import loss_options
    from softmaxce.distributed import _loss

    k = len(_loss.layout(loss_options(), soft=False, weighted=False))
    stats = world * n * k * 4
    # (a ring all-reduce of M floats receives (P - 1) / P of them in its reduce-scatter and as
    # many in its all-gather: 2 (P - 1) / P * N * D * 4 bytes per rank)
    return stats if name == "vocab_parallel" else stats + 2 * (world - 1) * n * d * 4 // world


def _peak_rss_reset() -> int:
    """The resident set now, after resetting its high-water mark (bytes; 0 off Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status("VmRSS")
    except OSError:
        return 0


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _inputs(mode: str, rank: int, world: int, n: int, v: int, d: int):
    """``(make, target)``: ``make()`` gives this rank's fresh differentiable arguments."""
    g = torch.Generator().manual_seed(0)
    v_r = v // world
    if mode == "logits":
        full = 4 * torch.randn(n, v, generator=g)
        target = torch.randint(0, v, (n,), generator=g)
        local = full[:, rank * v_r : (rank + 1) * v_r].clone()
        del full
        return lambda: (local.clone().requires_grad_() * 1,), target  # (a fresh non-leaf)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g) / d**0.5
    target = torch.randint(0, v, (n,), generator=g)
    rows = weight[rank * v_r : (rank + 1) * v_r].clone()
    del weight
    return lambda: (hidden.clone().requires_grad_(), rows.clone().requires_grad_()), target


def _worker(rank: int, world: int, folder: str, mode: str, n: int, v: int, d: int,
            repeats: int) -> None:  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/rendezvous",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(minutes=10),
    )
    make, target = _inputs(mode, rank, world, n, v, d)
    times: dict[str, list[float]] = {name: [] for name in PROVIDERS[mode]}
    peak: dict[str, int] = dict.fromkeys(PROVIDERS[mode], 0)
    losses = {}
    for r in range(repeats + 1):  # (round 0 warms up: the shard sizes, allocations)
        for name, fn in PROVIDERS[mode].items():
            args = make()
            dist.barrier()
            base = _peak_rss_reset()
            t0 = time.perf_counter()
            loss, grad = fn(*args, target, rank, world)
            elapsed = time.perf_counter() - t0
            rise = _status("VmHWM") - base if base else 0
            del grad, args
            losses[name] = loss.item()
            if r:  # (not round 0: its rise is mostly imports and the kernels' loading)
                times[name].append(elapsed)
                peak[name] = max(peak[name], rise)
    every = [None] * world
    dist.all_gather_object(every, (times, peak))
    if rank == 0:
        slowest = {
            name: [max(ts) for ts in zip(*(e[0][name] for e in every), strict=True)]
            for name in times
        }
        peaks = {name: max(e[1][name] for e in every) for name in times}
        result = {"times": slowest, "losses": losses, "peak": peaks}
        Path(folder, "result.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=sorted(PROVIDERS), default="logits")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--classes", type=int, default=32000)
    ap.add_argument("--dim", type=int, default=1024, help="D, the hidden size (linear mode)")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    if a.classes % a.world:
        ap.error("--classes must be a multiple of --world (even shards for the baseline)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # (glibc: every allocation of 64 KiB or more its own mapping, returned when freed, so that
    # the high-water mark sees each step's buffers rather than memory freed and kept earlier)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(
            _worker,
            args=(a.world, folder, a.mode, a.rows, a.classes, a.dim, a.repeats),
            nprocs=a.world,
            start_method="spawn",
        )
        result = json.loads(Path(folder, "result.json").read_text())
    rows = []
    baseline = list(PROVIDERS[a.mode])[1]
    base = statistics.median(result["times"][baseline])
    dim = f", D={a.dim}" if a.mode == "linear" else ""
    print(
        f"N={a.rows}, V={a.classes}{dim}, world size {a.world} (gloo, CPU, 1 thread per rank), "
        f"{a.repeats} repeats; {platform.processor() or platform.machine()}"
    )
    print(
        f"{'provider':22} {'median ms':>10} {'q1-q3 ms':>16} {'vs gather':>10} "
        f"{'bytes/rank':>12} {'peak MiB':>9}"
    )
    for name, ts in result["times"].items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        med = statistics.median(ts)
        nbytes = _bytes_received(name, a.rows, a.classes, a.dim, a.world)
        peak = result["peak"][name] / 2**20
        rows.append(
            [name, a.rows, a.classes, a.dim, a.world, med * 1e3, q[0] * 1e3, q[2] * 1e3, nbytes,
             round(peak, 1)]
        )  # fmt: skip
        print(
            f"{name:22} {med * 1e3:10.1f} {q[0] * 1e3:7.1f}-{q[2] * 1e3:<8.1f} "
            f"{base / med:9.2f}x {nbytes:12,d} {peak:9.1f}"
        )
    print(f"losses: {result['losses']}")
    RESULTS.mkdir(exist_ok=True)
    name = "distributed.csv" if a.mode == "logits" else "distributed_linear.csv"
    with open(RESULTS / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["provider", "N", "V", "D", "world", "median_ms", "q1_ms", "q3_ms",
                    "bytes_recv", "peak_mib"])  # fmt: skip
        w.writerows(rows)


if __name__ == "__main__":
    main()
