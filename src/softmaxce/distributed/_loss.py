"""The vocabulary-parallel loss on the core's row contract (``docs/internals.md``).

Forward, on every rank: the ``softmaxce._core.rows.RowStats`` of the local slice of the
classes (the core on the tensors, or its numba twin on CPU tensors), packed with the few other
per-row sums the loss needs into one ``(N, k)`` tensor, exchanged by ONE all-gather, folded
(``fold``: the core's ``merge``) in rank order (so every rank computes the same loss, bit
for bit), then the core's ``row_loss`` and reduction. Backward: the core's ``row_grad`` of
the local slice from the merged statistics; no communication. The linear loss
(``_linear``) computes the packed columns of its slice from blocks of classes, folded the
same way, and the gradient of each block with ``rows_grad``.

The packed columns (``layout``), each one float of the accumulation dtype per row:

* ``m, ties, rest, mass, tz``: the row statistics; ``kl`` with the KL divergence;
* ``ymass``: the row's weighted target mass before smoothing, ``sum_c w_c y_ic`` over the
  local classes, for a ``"mean"`` over the target mass with class weights or a probability
  target (the denominator ``W`` sums it over the ranks);
* ``zlz`` (``semantics="torch"``): 1 where PyTorch's ``coef * log_softmax`` meets ``0 * -inf``
  in the local slice (its loss row is NaN if any rank has one);
* ``top`` (``semantics="torch"``): the local maximum of the raw logits, NaN propagating (a
  row with a NaN or ``+inf`` logit anywhere, or only ``-inf`` logits, gets a NaN gradient).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import torch

from .._core import quirks, reduce, rows
from .._core._xp import acc_dtype, namespace, wide_dtype
from .._options import LossOptions
from .._problem import Problem, problem_of
from ._shard import Shard, gather_rows


@dataclass(frozen=True)
class Plan:
    """What a checked call computes: its options, its slice, and where the rows run."""

    opts: LossOptions
    shard: Shard
    group: Any
    kernels: ModuleType | None  # the numba twin of the row contract, or None (the core)
    inplace: bool


class State(NamedTuple):
    """What the backward needs from the forward: (N,) or 0-d tensors."""

    ctx: rows.RowContext
    total: torch.Tensor | None  # the mean's W (after the empty rule); None unless "mean"
    stats: rows.RowStats  # merged over every rank
    nan_rows: torch.Tensor | None  # rows whose gradient is NaN by the semantics, or None

    def rows(self, r0: int, r1: int) -> State:
        """The state of the rows ``[r0, r1)`` (a block of rows)."""
        nan = None if self.nan_rows is None else self.nan_rows[r0:r1]
        stats = rows.RowStats(*(a[r0:r1] for a in self.stats))
        return State(self.ctx.rows(r0, r1), self.total, stats, nan)


def problem(x: torch.Tensor, target: torch.Tensor, weight: Any, opts: LossOptions) -> Problem:
    """The core's problem of this rank's checked, batched slice (class dim 1)."""
    t = target if target.is_floating_point() else target.long()
    return problem_of(x, t, opts, axis=1, weight=weight)


def layout(opts: LossOptions, soft: bool, weighted: bool) -> tuple[str, ...]:
    """The names of the packed columns of a call (see the module docstring)."""
    sem = opts.semantics
    cols = ["m", "ties", "rest", "mass", "tz"]
    if opts.kl:
        cols.append("kl")
    if opts.reduction == "mean" and sem.mean_by(soft) == "mass" and (soft or weighted):
        cols.append("ymass")
    if sem.nan_zero_log_zero == "all" or (sem.nan_zero_log_zero == "soft" and soft):
        cols.append("zlz")
    if sem.nan_nonfinite_row_grad:
        cols.append("top")
    return tuple(cols)


def _np(a: torch.Tensor | None) -> np.ndarray | None:
    """The NumPy view of a CPU tensor for the numba twin (a float32 copy of a bfloat16 one:
    NumPy has no bfloat16; the logits never are, ``_kernels`` sends those to the core)."""
    if a is None:
        return None
    return (a.detach().float() if a.dtype == torch.bfloat16 else a.detach()).numpy()


def _local_stats(p: Problem, ctx: rows.RowContext, off: int, k: ModuleType | None):
    """The ``softmaxce._core.rows.RowStats`` of the classes ``[off, off + width)``."""
    if k is None:
        return rows.row_stats(p.x2, p.target, off, p.opts, ctx, weight=p.weight)
    np_ctx = rows.RowContext(_np(ctx.keep), _np(ctx.spread))
    s = k.row_stats(_np(p.x2), _np(p.target), off, p.opts, np_ctx, weight=_np(p.weight))
    return rows.RowStats(*(torch.from_numpy(a) for a in s))


def _hit(p: Problem, ctx: rows.RowContext, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index targets: (the label's local column, 0 where it is not here; whether it is here
    and the row counts)."""
    width = p.x2.shape[1]
    hit = (p.target >= offset) & (p.target < offset + width) & ctx.keep
    return torch.where(hit, p.target - offset, 0), hit


def _target_mass(p: Problem, ctx: rows.RowContext, offset: int, dtype: Any) -> torch.Tensor:
    """``v_i sum_c w_c y_ic`` over the local classes (the core's ``target_mass``)."""
    if p.soft:
        return reduce.target_mass(p.target, p.weight, ctx, dtype)
    local, hit = _hit(p, ctx, offset)
    return reduce.target_mass(local, p.weight, rows.RowContext(hit, None), dtype)


def _zero_log_zero(p: Problem, ctx: rows.RowContext, offset: int) -> torch.Tensor:
    """The core's ``zero_log_zero_rows`` of the local slice. For class indices the label is on
    one rank only: the slice gets one more column, a logit 0 of weight 1 that no rule flags,
    where the rows whose label is elsewhere point (a copy of the slice, under "torch" only)."""
    if p.soft:
        return quirks.zero_log_zero_rows(p.x2, p.target, p.opts, ctx, weight=p.weight)
    n, width = p.x2.shape
    x = torch.cat([p.x2, p.x2.new_zeros((n, 1))], dim=1)
    local, hit = _hit(p, ctx, offset)
    t = torch.where(hit, local, width)
    w = None if p.weight is None else torch.cat([p.weight, p.weight.new_ones(1)])
    return quirks.zero_log_zero_rows(x, t, p.opts, ctx, weight=w)


def columns(p: Problem, ctx: rows.RowContext, names: tuple[str, ...], offset: int,
            kernels: ModuleType | None) -> torch.Tensor:  # fmt: skip
    """The packed ``(N, k)`` columns ``names`` (in ``acc``) of the logits ``p.x2``, the
    classes ``[offset, offset + width)``: this rank's slice, or a block of it."""
    acc = acc_dtype(namespace(p.x2), p.x2.dtype)
    stats = _local_stats(p, ctx, offset, kernels)
    cols = dict(zip(rows.RowStats._fields, stats, strict=True))
    if "ymass" in names:
        cols["ymass"] = _target_mass(p, ctx, offset, acc)
    if "zlz" in names:
        cols["zlz"] = _zero_log_zero(p, ctx, offset)
    if "top" in names:
        cols["top"] = torch.amax(p.x2, dim=1)
    return torch.stack([cols[name].to(acc) for name in names], dim=1)


def _n_stats(names: tuple[str, ...]) -> int:
    return 6 if "kl" in names else 5  # (m, ties, rest, mass, tz[, kl]) come first


def _stats(packed: torch.Tensor, names: tuple[str, ...]) -> rows.RowStats:
    """The ``softmaxce._core.rows.RowStats`` of packed columns (``kl`` 0 without it)."""
    n = _n_stats(names)
    zero = (torch.zeros_like(packed[:, 0]),) if n == 5 else ()
    return rows.RowStats(*packed[:, :n].unbind(1), *zero)


def fold(a: torch.Tensor, b: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """The packed columns of two disjoint sets of classes of the same rows, combined: the
    statistics by the core's ``merge``, ``ymass`` and ``zlz`` added, ``top`` the larger
    (NaN propagating). Folding ranks' columns in rank order gives every rank the same bits;
    it folds the blocks of classes of the fused linear loss the same way."""
    n = _n_stats(names)
    merged = rows.merge(_stats(a, names), _stats(b, names))[:n]
    rest = [
        (torch.maximum if name == "top" else torch.add)(a[:, j], b[:, j])
        for j, name in enumerate(names[n:], n)
    ]
    return torch.stack([*merged, *rest], dim=1)


def _denominator(p: Problem, ctx: rows.RowContext, ymass: torch.Tensor | None):
    """The mean's ``W`` (after the semantics' empty rule), or None unless "mean"."""
    opts = p.opts
    if opts.reduction != "mean":
        return None
    sem = opts.semantics
    wide = wide_dtype(namespace(p.x2), p.x2.dtype)
    n_batch = p.x.shape[0]
    if ymass is not None:  # the global per-row target mass, as a one-column target
        return reduce.denominator(ymass[:, None], None, ctx, "mass", sem.empty, n_batch, wide)
    return reduce.denominator(p.target, None, ctx, sem.mean_by(p.soft), sem.empty, n_batch, wide)


Local = Callable[[rows.RowContext, tuple[str, ...]], torch.Tensor]


def forward(p: Problem, plan: Plan, local: Local | None = None) -> tuple[torch.Tensor, State]:
    """The loss of the full logits (the same on every rank), and the state of the backward.

    ``local(ctx, names)``: this rank's packed columns, where they are not those of the logits
    ``p.x2`` (the fused linear loss, whose ``p.x2`` is a stand-in, computes them by blocks).
    """
    opts = p.opts
    ctx = rows.row_context(p.x2, p.target, plan.shard.n_classes, opts)
    names = layout(opts, p.soft, p.weight is not None)
    if local is None:
        mine = columns(p, ctx, names, plan.shard.offset, plan.kernels)
    else:
        mine = local(ctx, names)
    every = gather_rows(mine, plan.group, plan.shard.world_size)
    folded = every[0]
    for r in range(1, plan.shard.world_size):  # (in rank order: the same bits on every rank)
        folded = fold(folded, every[r], names)
    wide = wide_dtype(namespace(p.x2), p.x2.dtype)

    def column(name: str) -> torch.Tensor | None:
        return folded[:, names.index(name)].to(wide) if name in names else None

    loss_rows = rows.row_loss(_stats(folded, names), opts, ctx)
    zlz = column("zlz")
    if zlz is not None:
        loss_rows = torch.where(zlz > 0, math.nan, loss_rows)
    total = _denominator(p, ctx, column("ymass"))
    top = column("top")
    nan_rows = None if top is None else quirks.nonfinite_rows(top[:, None])
    loss = reduce.reduce(loss_rows, opts.reduction, total)
    if opts.reduction == "none":
        loss = loss.reshape(p.batch_shape)
    return loss.to(p.x.dtype), State(ctx, total, _stats(folded, names), nan_rows)


def row_scale(p: Problem, state: State, grad_output: torch.Tensor) -> torch.Tensor:
    """The gradient's multiplier of each row (shape (N,), or () for every row)."""
    wide = wide_dtype(namespace(p.x2), p.x2.dtype)
    n = p.x2.shape[0]
    return reduce.row_scale(grad_output.to(wide), p.opts.reduction, state.total, n)


def grad(p: Problem, state: State, plan: Plan, grad_output: torch.Tensor) -> torch.Tensor:
    """``grad_output * d loss / d x`` of this rank's slice, in the layout of ``p.x``. In place
    (``plan.inplace``) it is the input itself, holding the gradient."""
    scale = row_scale(p, state, grad_output)
    # (the rows of a 2-D input are its own storage: in place needs it contiguous; the rows of
    # an N-D input are a copy. No data_ptr: torch.compile cannot trace it)
    rows_are_x = p.x.dim() == 2
    in_place = plan.inplace and rows_are_x
    g = rows_grad(p, state, plan.shard.offset, plan.kernels, scale, in_place=in_place)
    g = p.to_layout(g)
    return p.x.copy_(g) if plan.inplace and not rows_are_x else g


def rows_grad(p: Problem, state: State, offset: int, kernels: ModuleType | None, scale, *,
              in_place: bool) -> torch.Tensor:  # fmt: skip
    """The gradient rows of the logits ``p.x2`` (N, width), the classes ``[offset, offset +
    width)``, in their dtype (``in_place``: into ``p.x2``), from the merged statistics
    ``state`` of the same rows, with the semantics' rules: exactly 0 when the mean's ``W``
    counts nothing, NaN on the rows the semantics makes NaN."""
    g = _rows_grad(p, state, offset, kernels, scale, in_place=in_place)
    if state.total is not None:  # W == 0: exactly 0, even over NaN logits
        ok = (state.total != 0) & (state.total == state.total)
        g.masked_fill_(~ok, 0.0)
        if p.opts.semantics.nan_zero_mass_grad and not p.soft:
            g.masked_fill_((state.ctx.keep & ~ok)[:, None], math.nan)
    if state.nan_rows is not None:
        g.masked_fill_(state.nan_rows[:, None], math.nan)
    return g


def _rows_grad(p: Problem, state: State, off: int, k: ModuleType | None, scale, *,
               in_place: bool) -> torch.Tensor:  # fmt: skip
    """The rows' gradient by the core or its numba twin (``k``), before the rules."""
    opts, ctx = p.opts, state.ctx
    if k is None:
        g = rows.row_grad(p.x2, p.target, off, state.stats, scale, opts, ctx, weight=p.weight)
        return p.x2.copy_(g) if in_place else g.to(p.x2.dtype)
    np_ctx = rows.RowContext(_np(ctx.keep), _np(ctx.spread))
    stats = rows.RowStats(*(_np(a) for a in state.stats))
    xa = _np(p.x2)
    out = xa if in_place else np.empty(xa.shape, dtype=xa.dtype)
    k.row_grad(
        xa, _np(p.target), off, stats, _np(scale), opts, np_ctx, weight=_np(p.weight), out=out
    )
    return p.x2 if in_place else torch.from_numpy(out)
