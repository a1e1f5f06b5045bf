"""The vocabulary-parallel fused linear + cross-entropy: this rank holds rows of the weight.

Rank ``r`` holds the rows ``[offset_r, offset_r + V_r)`` of the weight, so its logits are the
classes of the plain loss's slice, never formed whole: the blocks of the single-process linear
loss (``softmaxce._linear``: a block of rows x a block of this rank's classes, one product)
stand for them.

Forward: each block's packed columns (``_loss.columns``, the classes ``offset_r + c0 ...``)
folded over this rank's blocks of classes (``_loss.fold``, the core's ``merge``) into the
``(N, k)`` columns of this rank, then the plain loss's forward (``_loss.forward``: the one
all-gather, the fold in rank order, the loss). Backward: the blocks again, each block's
logits computed again, its gradient from the merged statistics (``_loss.rows_grad``), its
share of the three products (``softmaxce._linear``); ``dW`` and ``db`` are this rank's, and
the partial ``dinput = G_r @ W_r`` is summed over the ranks by ONE all-reduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import _linear
from .._core import rows
from .._problem import Problem
from ..torch._linear import blocked_job, new_grads
from . import _loss
from ._shard import sum_over_ranks


@dataclass(frozen=True)
class LinearPlan:
    """A checked call of the linear loss: the plain loss's plan, and the logits per block
    (0: the memory rule of ``docs/linear.md``, applied to this rank's ``N x V_r``)."""

    plan: _loss.Plan
    chunk: int


def plan_of(plan: _loss.Plan, chunk_size: Any) -> LinearPlan:
    """The plan of a call, ``chunk_size`` checked (None or a positive int)."""
    return LinearPlan(plan, _linear.chunk(chunk_size) or 0)


def problem(x: torch.Tensor, w: torch.Tensor, target, weight, plan: LinearPlan) -> Problem:
    """The loss problem of this rank's ``(N, V_r)`` logits, over a zero-stride stand-in."""
    stand_in = torch.empty((), dtype=x.dtype, device=x.device).expand(x.shape[0], w.shape[0])
    return _loss.problem(stand_in, target, weight, plan.plan.opts)


def _job(p: Problem, x, w, b, lp: LinearPlan) -> _linear.Job:
    return blocked_job(p, x, w, b, lp.chunk, "core", host=False)


def _local_columns(job: _linear.Job, plan: _loss.Plan, ctx: rows.RowContext, names) -> Any:
    """This rank's packed ``(N, k)`` columns, a block of rows x a block of classes at a time
    (the blocks' columns folded over the classes)."""
    p, (r, c) = job.p, job.block
    n = job.h.shape[0]
    out = torch.empty((n, len(names)), dtype=job.mats.acc, device=job.h.device)
    buf = job.mats.buffers(r * c)
    for r0 in range(0, n, r):
        r1 = min(n, r0 + r)
        ctx_r, target = ctx.rows(r0, r1), p.target[r0:r1]
        folded = None
        for c0, c1, _, xb in _linear.logit_blocks(job, r0, r1, buf):
            pb = _block(p, xb, target, c0, c1)
            cols = _loss.columns(pb, ctx_r, names, plan.shard.offset + c0, plan.kernels)
            folded = cols if folded is None else _loss.fold(folded, cols, names)
        out[r0:r1] = folded
    return out


def _block(p: Problem, xb, target, c0: int, c1: int) -> Problem:
    """The problem of a block of logits ``xb``: rows' target, the classes ``[c0, c1)``."""
    tb, wb = _linear._class_slice(p, target, c0, c1)
    return _linear._block_problem(p, xb, tb, wb)


def forward(x, w, b, target, weight, lp: LinearPlan) -> tuple[torch.Tensor, _loss.State]:
    """The loss of the full logits ``x @ W.T + b`` (every rank's rows of ``W``), the same on
    every rank, and the state of the backward."""
    p = problem(x, w, target, weight, lp)
    job = _job(p, x, w, b, lp)
    return _loss.forward(p, lp.plan, lambda ctx, names: _local_columns(job, lp.plan, ctx, names))


def backward(x, w, b, target, weight, lp: LinearPlan, state: _loss.State, grad_output,
             sum_dinput: bool) -> tuple:  # fmt: skip
    """``(dinput, dW_r, db_r or None)``: ``grad_output`` times the gradients, ``dinput``
    summed over the ranks (one all-reduce) when ``sum_dinput``."""
    p = problem(x, w, target, weight, lp)
    job = _job(p, x, w, b, lp)
    plan, (r, c) = lp.plan, job.block
    n = x.shape[0]
    scale = _loss.row_scale(p, state, grad_output)
    grads = new_grads(x, w, b)
    buf = job.mats.buffers(r * c)
    for r0 in range(0, n, r):
        r1 = min(n, r0 + r)
        state_r, scale_r = state.rows(r0, r1), _linear._slice_rows(scale, r0, r1)
        target_r = p.target[r0:r1]
        for c0, c1, block, xb in _linear.logit_blocks(job, r0, r1, buf):
            pb = _block(p, xb, target_r, c0, c1)
            off = plan.shard.offset + c0
            g = _loss.rows_grad(pb, state_r, off, plan.kernels, scale_r, in_place=True)
            _linear._products(job, r0, r1, c0, c1, g, block, grads)
    dh, dw, db = grads
    if sum_dinput:
        sum_over_ranks(dh, plan.group)
    return dh.to(x.dtype), dw.to(w.dtype), None if b is None else db.to(b.dtype)
