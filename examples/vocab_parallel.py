"""Vocabulary-parallel cross-entropy: each process holds a slice of the classes.

Run with ``torchrun --nproc-per-node 2 examples/vocab_parallel.py`` (any number of processes;
gloo on the CPU, NCCL when CUDA is there). Every rank builds the same full logits from one
seed, keeps its own (uneven) slice of the classes, and computes the loss of the full logits
with ``softmaxce.distributed.vocab_parallel_cross_entropy``; it then checks the loss and its
slice of the gradient against the single-process ``softmaxce.torch.cross_entropy`` of the
full logits (which only this demo can afford: a real model never materialises them).

Then the fused linear + cross-entropy, ``vocab_parallel_linear_cross_entropy``: every rank
holds the same hidden states and its (uneven) rows of the output layer's weight and bias, and
checks the loss, the input's gradient (the full one on every rank) and its slice of the
weight's gradient against the single-process ``softmaxce.torch.linear_cross_entropy``.
"""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist

import softmaxce.torch as sct
from softmaxce.distributed import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy

TOL = 64 * torch.finfo(torch.float32).eps  # a few float32 rounding errors


def split(n_classes: int, world: int) -> list[int]:
    """Uneven slice sizes (rank r gets a share proportional to r + 1), summing to n_classes."""
    bounds = [n_classes * k * (k + 1) // (world * (world + 1)) for k in range(world + 1)]
    return [b - a for a, b in itertools.pairwise(bounds)]


def logits_slices(rank: int, world: int, device: torch.device) -> bool:
    """The loss of logits split by classes; whether it matches the single-process one."""
    n_rows, n_classes = 512, 5000
    opts = {"label_smoothing": 0.1, "z_loss": 1e-4, "ignore_index": -100}
    g = torch.Generator().manual_seed(0)  # the same data on every rank
    full = 4 * torch.randn(n_rows, n_classes, generator=g)
    target = torch.randint(0, n_classes, (n_rows,), generator=g)
    target[::7] = -100  # some ignored rows (padding)
    sizes = split(n_classes, world)
    lo = sum(sizes[:rank])
    mine = full[:, lo : lo + sizes[rank]].to(device).requires_grad_()

    loss = vocab_parallel_cross_entropy(mine, target.to(device), **opts)
    loss.backward()  # this rank's slice of the gradient, no communication

    single = sct.cross_entropy(full, target, **opts)  # float32, as the slices
    ref_x = full.double().requires_grad_()
    ref = sct.cross_entropy(ref_x, target, **opts)  # float64
    ref.backward()
    ref_grad = ref_x.grad[:, lo : lo + sizes[rank]]
    grad_err = (mine.grad.cpu().double() - ref_grad).abs().max().item()
    print(
        f"rank {rank}/{world}: classes [{lo}, {lo + sizes[rank]}) of {n_classes}: "
        f"loss {loss.item():.7f}, single process {single.item():.7f} "
        f"(float64 {ref.item():.7f}); gradient slice error {grad_err:.1e}",
        flush=True,
    )
    ok = abs(loss.item() - ref.item()) <= TOL * abs(ref.item())
    return ok and grad_err <= TOL * ref_grad.abs().max().item()


def linear_slices(rank: int, world: int, device: torch.device) -> bool:
    """The fused linear loss with the weight's rows split; whether it matches."""
    n_rows, dim, n_classes = 512, 256, 5000
    opts = {"label_smoothing": 0.1, "z_loss": 1e-4, "ignore_index": -100}
    g = torch.Generator().manual_seed(1)  # the same data on every rank
    hidden = torch.randn(n_rows, dim, generator=g)
    weight = torch.randn(n_classes, dim, generator=g) / dim**0.5
    bias = torch.randn(n_classes, generator=g)
    target = torch.randint(0, n_classes, (n_rows,), generator=g)
    target[::7] = -100
    sizes = split(n_classes, world)
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    x = hidden.to(device, copy=True).requires_grad_()
    w = weight[lo:hi].to(device, copy=True).requires_grad_()
    b = bias[lo:hi].to(device, copy=True).requires_grad_()

    loss = vocab_parallel_linear_cross_entropy(x, w, target.to(device), linear_bias=b, **opts)
    loss.backward()  # x.grad: the full gradient (all-reduced); w.grad, b.grad: this rank's rows

    single = sct.linear_cross_entropy(hidden, weight, target, linear_bias=bias, **opts)
    ref_x, ref_w = hidden.double().requires_grad_(), weight.double().requires_grad_()
    ref = sct.linear_cross_entropy(ref_x, ref_w, target, linear_bias=bias.double(), **opts)
    ref.backward()
    x_err = (x.grad.cpu().double() - ref_x.grad).abs().max().item()
    w_err = (w.grad.cpu().double() - ref_w.grad[lo:hi]).abs().max().item()
    print(
        f"rank {rank}/{world}: weight rows [{lo}, {hi}) of {n_classes}: "
        f"linear loss {loss.item():.7f}, single process {single.item():.7f} "
        f"(float64 {ref.item():.7f}); input gradient error {x_err:.1e}, "
        f"weight slice gradient error {w_err:.1e}",
        flush=True,
    )
    ok = abs(loss.item() - ref.item()) <= TOL * abs(ref.item())
    ok = ok and x_err <= TOL * ref_x.grad.abs().max().item()
    return ok and w_err <= TOL * ref_w.grad.abs().max().item()


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if cuda else "cpu")
    ok = logits_slices(rank, world, device)
    ok = linear_slices(rank, world, device) and ok
    dist.destroy_process_group()
    if not ok:
        raise SystemExit(f"rank {rank}: the vocabulary-parallel loss differs")


if __name__ == "__main__":
    main()
