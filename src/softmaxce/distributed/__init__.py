r"""Vocabulary-parallel softmax cross-entropy on ``torch.distributed``.

When a model's output layer is split by classes across processes (tensor parallelism), rank
``r`` holds the logits of the classes ``[offset_r, offset_r + V_r)`` only.
``vocab_parallel_cross_entropy`` gives the loss of the *full* logits on every rank, with
the core's mergeable row statistics (``docs/distributed.md``): each rank reduces its slice to
a few numbers per row, one all-gather exchanges them, each rank merges them in rank order, and
the gradient of each slice needs nothing from the other ranks.

Files: ``_shard`` (the split of the classes, the collective), ``_loss`` (the loss and the
gradient on the core's row contract), this module (validation and autograd).

One process holding every class (a group of one) is the plain loss:

>>> import tempfile, torch, torch.distributed as dist
>>> from softmaxce.distributed import vocab_parallel_cross_entropy
>>> rendezvous = f"file://{tempfile.mkdtemp()}/rendezvous"
>>> dist.init_process_group("gloo", init_method=rendezvous, rank=0, world_size=1)
>>> import softmaxce.torch as sct
>>> x = torch.tensor([[2.0, 1.0, 0.1], [0.0, 0.0, 3.0]], requires_grad=True)
>>> t = torch.tensor([0, 2])
>>> loss = vocab_parallel_cross_entropy(x, t, label_smoothing=0.1)
>>> loss.backward()
>>> loss
tensor(0.4043, grad_fn=<VocabParallelCrossEntropyBackward>)
>>> x.grad
tensor([[-0.1372,  0.1045,  0.0326],
        [ 0.0060,  0.0060, -0.0119]])
>>> sct.cross_entropy(x, t, label_smoothing=0.1)
tensor(0.4043, grad_fn=<FusedCrossEntropyBackward>)
>>> dist.destroy_process_group()

With ``P`` processes, ``torchrun --nproc-per-node P examples/vocab_parallel.py`` (see
``docs/distributed.md``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .. import _dispatch
from .. import _validate as v
from .._problem import readable
from ..torch._checks import _disjoint, check_call
from . import _loss
from ._shard import resolve_group, shard

__all__ = ["vocab_parallel_cross_entropy"]

BACKENDS = ("auto", "numba", "core")


def vocab_parallel_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    group: Any = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    soft_target_loss: str = "cross-entropy",
    inplace_backward: bool = False,
    semantics: str = "softmaxce",
    backend: str = "auto",
) -> torch.Tensor:
    r"""Softmax cross-entropy of logits split by classes across the ranks of ``group``.

    ``input`` is this rank's slice ``(N, V_r)`` of the logits (class dim 1 as in
    ``F.cross_entropy``; ``(N, V_r, d1, ...)`` and unbatched ``(V_r,)`` too): the slices are
    contiguous and in rank order, and may be uneven. ``target``: global class indices (the same
    tensor on every rank), or this rank's slice of a float (probability) target; ``weight``:
    this rank's slice of the class weights. Every rank gets the loss of the full logits,
    bit for bit the same, equal up to float rounding to
    ``softmaxce.torch.cross_entropy`` of the concatenated logits (same options, same
    ``semantics``); its backward gives this rank's slice of the gradient, with no
    communication. ``soft_target_loss="kl-divergence"`` adds ``sum_c w_c q_c log q_c``, as in
    ``softmaxce.softmax_cross_entropy``.

    .. math::
        L_i = \sum_c w_c q_{ic} (\mathrm{lse}(z_i) - z_{ic}) + \zeta\,\mathrm{lse}(z_i)^2,
        \qquad \mathrm{lse}(z_i) = \log \textstyle\sum_r \sum_{c \in r} e^{z_{ic}}

    Communication: the sizes ``V_r`` are gathered once per group and local size (the first
    call); then each forward is ONE all-gather of ``k`` floats per row per rank (``k = 5``:
    the row statistics ``m, ties, rest, mass, tz``; 6 with the KL divergence; one more for a
    weighted or soft-target ``"mean"``; two more with ``semantics="torch"``), float32 for
    float16/bfloat16/float32 logits (20 bytes per row per rank), float64 for float64.
    The backward communicates nothing: ``grad_output`` must be the same on every rank (as it
    is when every rank computes the same loss downstream).

    ``backend``: ``"auto"`` (the numba twin of the row contract on CPU tensors where it can
    run, else the core on the tensors), ``"numba"`` or ``"core"``. ``inplace_backward=True``
    writes this rank's gradient into ``input``'s storage in the backward (nothing of size
    ``N x V_r`` allocated for it on the numba path with a 2-D input): afterwards ``input``
    holds the gradient; it needs a contiguous input that is not a leaf requiring grad, and its
    backward runs once. The gradient flows to ``input`` only (a ``target`` or ``weight`` that
    requires grad is refused); no double backward.

    Labels are checked against the global class count and weights for finiteness where they
    are on the CPU (no device synchronisation elsewhere). Works on any backend of
    ``torch.distributed`` (gloo, NCCL); under ``torch.compile`` it runs the core, and the
    collective is traced (``docs/distributed.md``).
    """
    call = check_call(
        input, target, weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        inplace_backward=inplace_backward, semantics=semantics, backend="core",
    )  # fmt: skip
    opts = call.opts
    if v.soft_target_loss(soft_target_loss) == "kl-divergence":
        opts = dataclasses.replace(opts, kl=True)
    _no_grad_of(target, weight)
    g = resolve_group(group)
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    t = target.unsqueeze(0) if unbatched else target
    mine = shard(g, x.shape[1], x.device)
    _check_values(x, t, weight, opts, mine.n_classes)
    kernels = _kernels(x, v.choice(backend, BACKENDS, "backend"))
    if inplace_backward and kernels is not None:
        _disjoint(input, target, weight)
    plan = _loss.Plan(opts, mine, g, kernels, inplace_backward)
    if torch.is_grad_enabled() and x.requires_grad:
        loss = VocabParallelCrossEntropy.apply(x, t, weight, plan)
    else:
        loss = _loss.forward(_loss.problem(x, t, weight, opts), plan)[0]
    return loss.squeeze(0) if unbatched and opts.reduction == "none" else loss


def _no_grad_of(target: torch.Tensor, weight: torch.Tensor | None) -> None:
    for name, t in (("target", target), ("weight", weight)):
        if t is not None and t.requires_grad and torch.is_grad_enabled():
            msg = (
                f"{name} requires grad, but vocab_parallel_cross_entropy differentiates the "
                f"input only; detach the {name}"
            )
            raise ValueError(msg)


def _check_values(x, target, weight, opts, n_classes: int) -> None:
    """The checks that read the data, where it is on the host: labels in ``[0, C)`` of the
    global ``C`` (or ignored), this rank's class weights finite (and >= 0 unless the semantics
    accepts negative ones)."""
    if not target.is_floating_point() and readable(target):
        v.check_labels(v.to_host(target), n_classes, opts.ignore_index, "target")
    if weight is not None and readable(weight):
        host = v.to_host(weight.detach()).astype("float64")
        v.class_weight(host, x.shape[1], allow_negative=opts.semantics.negative_weight)


def _kernels(x: torch.Tensor, backend: str):
    """The numba twin of the row contract (``softmaxce._numba``), or None for the core."""
    if backend == "core":
        return None
    fits = x.device.type == "cpu" and x.dtype != torch.bfloat16
    if not fits or torch.compiler.is_compiling():
        if backend == "numba":
            msg = (
                f"backend='numba' runs on float16/float32/float64 CPU tensors outside "
                f"torch.compile, got {x.dtype} on {x.device}; use 'auto' or 'core'"
            )
            raise ValueError(msg)
        return None
    kernels = _dispatch.numba_kernels()
    if kernels is not None and hasattr(kernels, "row_stats"):
        return kernels
    if backend == "numba":
        msg = (
            "backend='numba': the numba twin of the row contract cannot run here "
            f"({_dispatch.unavailable() if kernels is None else 'no row_stats/row_grad'})"
        )
        raise ImportError(msg)
    return None


class VocabParallelCrossEntropy(torch.autograd.Function):
    """Forward: the local statistics, the one all-gather, the merged loss. Backward: the
    local slice's ``row_grad``, no communication."""

    @staticmethod
    def forward(ctx, x, target, weight, plan):
        p = _loss.problem(x, target, weight, plan.opts)
        loss, state = _loss.forward(p, plan)
        ctx.plan, ctx.done = plan, False
        ctx.save_for_backward(x, target, weight, state.total, state.nan_rows, *_flat(state))
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        if ctx.plan.inplace and ctx.done:
            msg = (
                "vocab_parallel_cross_entropy(inplace_backward=True): the backward can run only "
                "once (the first wrote the gradient over the input); use inplace_backward=False "
                "with retain_graph=True"
            )
            raise RuntimeError(msg)
        x, target, weight, total, nan_rows, keep, spread, *stats = ctx.saved_tensors
        state = _loss.State(
            _loss.rows.RowContext(keep, spread), total, _loss.rows.RowStats(*stats), nan_rows
        )
        p = _loss.problem(x, target, weight, ctx.plan.opts)
        ctx.done = True
        return _loss.grad(p, state, ctx.plan, grad_output), None, None, None


def _flat(state: _loss.State) -> tuple:
    return (state.ctx.keep, state.ctx.spread, *state.stats)
