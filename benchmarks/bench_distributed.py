"""Vocabulary-parallel cross-entropy against gathering the full logits, on CPU with gloo.

Two providers, measured side by side in one run (rounds interleave them, so that load from
other processes hits both alike), each on world size ``P`` (default 2) with the classes split
evenly (``V / P`` per rank):

* ``vocab_parallel``: ``softmaxce.distributed.vocab_parallel_cross_entropy`` of the local
  slice (one all-gather of the packed per-row statistics; a local backward);
* ``gather_logits``: all-gather the logits' slices into the full ``(N, V)`` logits on every
  rank, then the single-process ``softmaxce.torch.cross_entropy`` and its gradient, of which
  each rank keeps its slice.

One measurement is forward + backward (``torch.autograd.grad`` of the loss with respect to the
local slice, a fresh non-leaf float32 tensor made outside the timed region), timed on every
rank after a barrier; the slowest rank's time counts. Reported: the median and quartiles, and
the bytes each rank receives from the collective per forward (``P * N * k * 4`` for the
statistics, ``k`` floats per row; ``N * V * 4`` for the logits).

    python benchmarks/bench_distributed.py [--rows N] [--classes V] [--world P] [--repeats R]

Defaults: N=4096, V=32000, P=2, R=7; one torch thread per rank. Prints a table and writes
benchmarks/results/distributed.csv.
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


PROVIDERS = {"vocab_parallel": vocab_parallel, "gather_logits": gather_logits}


def _bytes_received(name: str, n: int, v: int, world: int) -> int:
    """Bytes each rank receives from the forward's collective (float32 logits)."""
    if name == "gather_logits":
        return n * v * 4
    from softmaxce._options import loss_options
    from softmaxce.distributed import _loss

    k = len(_loss.layout(loss_options(), soft=False, weighted=False))
    return world * n * k * 4


def _worker(rank: int, world: int, folder: str, n: int, v: int, repeats: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/rendezvous",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(minutes=10),
    )
    g = torch.Generator().manual_seed(0)
    full = 4 * torch.randn(n, v, generator=g)
    target = torch.randint(0, v, (n,), generator=g)
    v_r = v // world
    local = full[:, rank * v_r : (rank + 1) * v_r].clone()
    del full
    times: dict[str, list[float]] = {name: [] for name in PROVIDERS}
    losses = {}
    for r in range(repeats + 1):  # (round 0 warms up: the shard sizes, allocations)
        for name, fn in PROVIDERS.items():
            x = local.clone().requires_grad_()
            x1 = x * 1  # (a fresh non-leaf)
            dist.barrier()
            t0 = time.perf_counter()
            loss, grad = fn(x1, target, rank, world)
            elapsed = time.perf_counter() - t0
            del grad
            losses[name] = loss.item()
            if r:
                times[name].append(elapsed)
    every = [None] * world
    dist.all_gather_object(every, times)
    if rank == 0:
        slowest = {
            name: [max(ts) for ts in zip(*(e[name] for e in every), strict=True)] for name in times
        }
        Path(folder, "result.json").write_text(json.dumps({"times": slowest, "losses": losses}))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--classes", type=int, default=32000)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    if a.classes % a.world:
        ap.error("--classes must be a multiple of --world (even shards for the baseline)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(
            _worker,
            args=(a.world, folder, a.rows, a.classes, a.repeats),
            nprocs=a.world,
            start_method="spawn",
        )
        result = json.loads(Path(folder, "result.json").read_text())
    rows = []
    base = statistics.median(result["times"]["gather_logits"])
    print(
        f"N={a.rows}, V={a.classes}, world size {a.world} (gloo, CPU, 1 thread per rank), "
        f"{a.repeats} repeats; {platform.processor() or platform.machine()}"
    )
    print(
        f"{'provider':16} {'median ms':>10} {'q1-q3 ms':>16} {'vs gather':>10} {'bytes/rank':>12}"
    )
    for name, ts in result["times"].items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        med = statistics.median(ts)
        nbytes = _bytes_received(name, a.rows, a.classes, a.world)
        rows.append([name, a.rows, a.classes, a.world, med * 1e3, q[0] * 1e3, q[2] * 1e3, nbytes])
        print(
            f"{name:16} {med * 1e3:10.1f} {q[0] * 1e3:7.1f}-{q[2] * 1e3:<8.1f} "
            f"{base / med:9.2f}x {nbytes:12,d}"
        )
    print(f"losses: {result['losses']}")
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "distributed.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["provider", "N", "V", "world", "median_ms", "q1_ms", "q3_ms", "bytes_recv"])
        w.writerows(rows)


if __name__ == "__main__":
    main()
