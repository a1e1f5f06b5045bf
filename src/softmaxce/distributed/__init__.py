r"""Vocabulary-parallel softmax cross-entropy on ``torch.distributed``.

When a model's output layer is split by classes across processes (tensor parallelism), rank
``r`` holds the logits of the classes ``[offset_r, offset_r + V_r)`` only.
``vocab_parallel_cross_entropy`` gives the loss of the *full* logits on every rank, with
the core's mergeable row statistics (``docs/distributed.md``): each rank reduces its slice to
a few numbers per row, one all-gather exchanges them, each rank merges them in rank order, and
the gradient of each slice needs nothing from the other ranks.
``vocab_parallel_linear_cross_entropy`` is the fused linear + cross-entropy of an output
layer split by its weight's rows: the same statistics from this rank's logits computed a
block at a time, the same all-gather, and one all-reduce of the input's gradient backward.

Files: ``_shard`` (the split of the classes, the collectives), ``_loss`` (the loss and the
gradient on the core's row contract), ``_linear`` (the blocked pass of the linear loss), this
module (validation and autograd).

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
from ..torch._linear import check_operands
from . import _linear, _loss
from ._shard import resolve_group, shard

__all__ = ["vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy"]

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
    opts = _options(
        input, target, weight, inplace_backward, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, semantics=semantics,
        soft_target_loss=soft_target_loss,
    )  # fmt: skip
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    t = target.unsqueeze(0) if unbatched else target
    g, mine = _placed(x, t, (target, weight), group, opts, "the input")
    kernels = _kernels(x.device, x.dtype, v.choice(backend, BACKENDS, "backend"))
    if inplace_backward and kernels is not None:
        _disjoint(input, target, weight)
    plan = _loss.Plan(opts, mine, g, kernels, inplace_backward)
    if torch.is_grad_enabled() and x.requires_grad:
        loss = VocabParallelCrossEntropy.apply(x, t, weight, plan)
    else:
        loss = _loss.forward(_loss.problem(x, t, weight, opts), plan)[0]
    return loss.squeeze(0) if unbatched and opts.reduction == "none" else loss


def vocab_parallel_linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    group: Any = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    soft_target_loss: str = "cross-entropy",
    semantics: str = "softmaxce",
    chunk_size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Fused linear + softmax cross-entropy with the weight's rows (the classes) split across
    the ranks of ``group``: the loss of the full logits ``input @ W.T + b`` on every rank,
    never holding more than a block of this rank's logits.

    ``linear_weight`` is this rank's rows ``[offset_r, offset_r + V_r)`` of ``W`` ``(V, D)``
    (``torch.nn.Linear``'s layout; contiguous slices in rank order, uneven allowed),
    ``linear_bias`` and the class ``weight`` its slices ``(V_r,)``. ``input`` ``(..., D)`` must be
    the same on every rank (as the input of a column-parallel layer in tensor parallelism);
    ``target``: global class indices ``(...)``, the same on every rank, or this rank's slice
    ``(..., V_r)`` of a float (probability) target. Every rank gets the same loss, bit for bit,
    equal up to float rounding to ``softmaxce.torch.linear_cross_entropy`` of the concatenated
    weight and bias (same options; N-D inputs as their ``(N, D)`` rows, the loss of
    ``"none"`` of shape ``input.shape[:-1]``).

    .. math::
        z_{ic} = x_i \cdot W_c + b_c, \qquad
        \mathrm{lse}(z_i) = \log \textstyle\sum_r \sum_{c \in r} e^{z_{ic}}, \qquad
        L_i = \sum_c w_c q_{ic} (\mathrm{lse}(z_i) - z_{ic}) + \zeta\,\mathrm{lse}(z_i)^2

    Forward: this rank's logits a block at a time (``chunk_size`` logits per block, None: the
    memory rule of ``softmaxce.torch.linear_cross_entropy`` on ``N x V_r``), each block reduced
    to the core's row statistics and merged, then what ``vocab_parallel_cross_entropy``
    does: ONE all-gather of the packed per-row statistics (20 bytes per row per rank by
    default; ``docs/distributed.md``) and the merge in rank order. Backward: the blocks' logits
    again, their gradient ``G_r`` from the merged statistics, ``dW_r = G_r^T x`` and
    ``db_r = sum_i G_r`` (this rank's slices, no communication) and the partial
    ``dinput = G_r W_r``, which ONE all-reduce sums over the ranks (``N x D`` numbers in the
    accumulation dtype: float32, float64 for float64), so that every rank's ``input.grad`` is
    the full gradient. ``grad_output`` must be the same on every rank.

    Gradients reach ``input``, ``linear_weight`` and ``linear_bias`` (a ``target`` or class
    ``weight`` that requires grad is refused); no double backward. ``backend``: ``"auto"``
    (the numba twin of the row contract on CPU tensors where it can run, else the core),
    ``"numba"`` or ``"core"``. Under ``torch.compile`` the core runs, and the collectives are
    traced (``docs/distributed.md``). A runnable example needs several processes, so it is
    not here: ``torchrun --nproc-per-node 2 examples/vocab_parallel.py`` runs one.
    """
    check_operands(input, linear_weight, linear_bias, batch_dims=True)
    v_r = linear_weight.shape[0]
    x, t = _as_rows(input, target, v_r)
    stand_in = torch.empty((), dtype=x.dtype, device=x.device).expand(x.shape[0], v_r)
    opts = _options(
        stand_in, t, weight, False, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, semantics=semantics,
        soft_target_loss=soft_target_loss,
    )  # fmt: skip
    g, mine = _placed(stand_in, t, (target, weight), group, opts, "the linear layer")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32  # (the blocks' dtype)
    kernels = _kernels(x.device, acc, v.choice(backend, BACKENDS, "backend"))
    lp = _linear.plan_of(_loss.Plan(opts, mine, g, kernels, False), chunk_size)
    operands = (linear_weight, linear_bias)
    if torch.is_grad_enabled() and any(o is not None and o.requires_grad for o in (x, *operands)):
        loss = VocabParallelLinearCrossEntropy.apply(x, linear_weight, linear_bias, t, weight, lp)
    else:
        loss = _linear.forward(x, linear_weight, linear_bias, t, weight, lp)[0]
    return loss.reshape(input.shape[:-1]) if opts.reduction == "none" else loss


def _options(x, target, weight, inplace: bool, *, soft_target_loss: str, **options: Any):
    """The checked ``LossOptions`` of a call (``check_call``'s checks of the arguments, on
    ``x``: the logits, or a stand-in of their shape)."""
    kl = v.soft_target_loss(soft_target_loss) == "kl-divergence"
    call = check_call(x, target, weight, inplace_backward=inplace, backend="core", **options)
    return dataclasses.replace(call.opts, kl=True) if kl else call.opts


_CALLER = {
    "the input": "vocab_parallel_cross_entropy",
    "the linear layer": "vocab_parallel_linear_cross_entropy",
}


def _placed(x, t, given: tuple, group: Any, opts, grad_to: str) -> tuple[Any, Any]:
    """The group and this rank's shard of the classes, after the checks that need them:
    ``x`` the ``(N, V_r)`` logits (or a stand-in), ``t`` the target as rows, ``given`` the
    target and class weights as passed (which must not require grad: it flows to
    ``grad_to`` only); labels against the global class count."""
    target, weight = given
    _no_grad_of(target, weight, _CALLER[grad_to], grad_to)
    g = resolve_group(group)
    mine = shard(g, x.shape[1], x.device)
    _check_values(x, t, weight, opts, mine.n_classes)
    return g, mine


def _as_rows(input: torch.Tensor, target: Any, v_r: int) -> tuple[torch.Tensor, Any]:
    """``input (..., D)`` and its target as rows: ``(N, D)``, and ``(N,)`` or ``(N, V_r)``."""
    x = input.reshape(-1, input.shape[-1])
    if not isinstance(target, torch.Tensor):
        return x, target  # (check_call names it)
    soft = target.is_floating_point()
    batch = tuple(input.shape[:-1])
    want = (*batch, v_r) if soft else batch
    if tuple(target.shape) != want:
        what = "a float (probability) target" if soft else "integer class indices"
        msg = (
            f"target: {what} of an input of shape {tuple(input.shape)} and a linear_weight "
            f"of {v_r} rows must have shape {want}, got {tuple(target.shape)}"
        )
        raise ValueError(msg)
    return x, target.reshape(-1, v_r) if soft else target.reshape(-1)


def _no_grad_of(target: torch.Tensor, weight: torch.Tensor | None, fn: str, what: str) -> None:
    for name, t in (("target", target), ("weight", weight)):
        if t is not None and t.requires_grad and torch.is_grad_enabled():
            msg = f"{name} requires grad, but {fn} differentiates {what} only; detach the {name}"
            raise ValueError(msg)


def _check_values(x, target, weight, opts, n_classes: int) -> None:
    """The checks that read the data, where it is on the host: labels in ``[0, C)`` of the
    global ``C`` (or ignored), this rank's class weights finite (and >= 0 unless the semantics
    accepts negative ones)."""
    if not target.is_floating_point() and readable(target):
        v.check_labels(v.to_host(target), n_classes, opts.ignore_index, "target")
    if weight is not None and readable(weight):
        host = v.to_host(weight.detach().double())  # (NumPy has no bfloat16)
        v.class_weight(host, x.shape[1], allow_negative=opts.semantics.negative_weight)


def _kernels(device: torch.device, dtype: torch.dtype, backend: str):
    """The numba twin of the row contract (``softmaxce._numba``) for logits of ``dtype`` on
    ``device``, or None for the core."""
    if backend == "core":
        return None
    fits = device.type == "cpu" and dtype != torch.bfloat16
    if not fits or torch.compiler.is_compiling():
        if backend == "numba":
            msg = (
                f"backend='numba' runs on float16/float32/float64 CPU tensors outside "
                f"torch.compile, got {dtype} on {device}; use 'auto' or 'core'"
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


class VocabParallelLinearCrossEntropy(torch.autograd.Function):
    """Forward: the blocked local statistics, the one all-gather, the merged loss. Backward:
    the blocks again, this rank's ``dW`` and ``db``, and one all-reduce of ``dinput``."""

    @staticmethod
    def forward(ctx, x, w, b, target, weight, lp):
        loss, state = _linear.forward(x, w, b, target, weight, lp)
        ctx.lp = lp
        ctx.save_for_backward(x, w, b, target, weight, state.total, state.nan_rows, *_flat(state))
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        x, w, b, target, weight, total, nan_rows, keep, spread, *stats = ctx.saved_tensors
        state = _loss.State(
            _loss.rows.RowContext(keep, spread), total, _loss.rows.RowStats(*stats), nan_rows
        )
        dx, dw, db = _linear.backward(
            x, w, b, target, weight, ctx.lp, state, grad_output, ctx.needs_input_grad[0]
        )
        need = ctx.needs_input_grad
        return (
            dx if need[0] else None, dw if need[1] else None, db if need[2] else None,
            None, None, None,
        )  # fmt: skip
