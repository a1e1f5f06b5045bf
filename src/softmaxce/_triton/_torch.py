"""``softmaxce.torch.cross_entropy(backend="triton")``: the autograd node of the Triton path.

Forward: the row context and the mean's denominator by the core (O(N) torch ops on the
device), then one fused kernel reads the logits for the row statistics and writes the gradient
for ``grad_output = 1`` (into the logits with ``inplace_backward``); the loss comes from the
statistics by the core's ``row_loss`` and ``reduce``. Backward: the saved gradient times
``grad_output`` by a kernel that skips the rows whose scale is 1, deciding it on the device
(no ``.item()``, no host synchronisation anywhere). ``create_graph=True`` takes the core's
differentiable gradient, as the other paths do.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _run
from .._core import reduce
from .._options import LossOptions
from .._problem import Problem
from . import interpreting, launchers, unavailable


def triton_auto(input: torch.Tensor, other_grads: bool) -> bool:
    """Whether ``backend="auto"`` takes the Triton kernel: CUDA tensors of fp32, fp16 or bf16
    whose only gradient is the input's, when triton is installed (not under torch.compile,
    which traces the core)."""
    return (
        input.device.type == "cuda"
        and input.dtype != torch.float64  # (the core accumulates float64 in float64)
        and not other_grads
        and unavailable() is None
        and not torch.compiler.is_compiling()
    )


def triton_path(input: torch.Tensor, other_grads: bool) -> str:
    """``backend="triton"``: CUDA tensors (CPU ones under ``TRITON_INTERPRET=1``) whose only
    gradient is the input's; raises saying why otherwise."""
    why = unavailable()
    if why is not None:
        msg = f"backend='triton' cannot run: {why}; use 'auto' or 'core'"
        raise ImportError(msg)
    dev = input.device.type
    if not (dev == "cuda" or (dev == "cpu" and interpreting())):
        msg = (
            "backend='triton' runs on CUDA tensors (on CPU tensors only under Triton's "
            f"interpreter, TRITON_INTERPRET=1), got an input on {input.device}; "
            "use 'auto' or 'core'"
        )
        raise ValueError(msg)
    if input.dtype == torch.float64:
        msg = (
            "backend='triton' computes float32, float16 and bfloat16 logits (accumulating in "
            "float32), got float64, which softmaxce accumulates in float64; use 'auto' or "
            "'core'"
        )
        raise ValueError(msg)
    if other_grads:
        msg = (
            "backend='triton' differentiates the input only, but the target or the weight "
            "requires grad; use 'auto' or 'core' (or detach them)"
        )
        raise ValueError(msg)
    return "triton"


def _live(ctx, total):
    """The rows whose gradient is not 0: those that count, and none when the mean's W is 0
    (the gradient is then exactly 0, NaN logits included)."""
    if total is None:
        return ctx.keep
    return ctx.keep & (total != 0) & (total == total)


def forward(p: Problem, want_grad: bool, out: torch.Tensor | None = None):
    """``(loss, (N, C) gradient rows for grad_output = 1, or None)`` of a torch problem."""
    kernels = launchers()
    ctx, total = _run._context(p)
    if not want_grad:
        stats = kernels.row_stats(p.x2, p.target, 0, p.opts, ctx, weight=p.weight)
        return _run.core_loss(p, _run.CoreState(ctx, total, stats)), None
    one = torch.ones((), dtype=torch.float64, device=p.x2.device)
    scale = one if total is None else reduce.row_scale(one, "mean", total, p.x2.shape[0])
    stats, g = kernels.fused(
        p.x2, p.target, p.opts, ctx, row_scale=scale, weight=p.weight, out=out,
        live=_live(ctx, total),
    )  # fmt: skip
    quirky = _run._quirky_grad(p, ctx, total, g)  # (semantics="torch": its NaN rows)
    if quirky is not g:
        g.copy_(quirky)
    return _run.core_loss(p, _run.CoreState(ctx, total, stats)), g


def _rows_view(p: Problem) -> torch.Tensor | None:
    """``p.x2`` when it is the logits' own memory with unit column stride (2-D input)."""
    x2, x = p.x2, p.x
    same = x2.data_ptr() == x.data_ptr() and x2.shape[0] * x2.shape[1] == x.numel()
    return x2 if same and x.is_contiguous() else None


class TritonCrossEntropy(torch.autograd.Function):
    """Forward: loss and gradient in one fused kernel. Backward: the saved gradient times
    ``grad_output`` (given away without a copy, as ``FusedCrossEntropy`` does)."""

    @staticmethod
    def forward(ctx, x, target, weight, opts, inplace):
        from ..torch._autograd import problem

        p = problem(x, target, weight, opts)
        sem = opts.semantics
        # (a framework's NaN quirks read the logits after the kernel: then not in the kernel)
        quirky = sem.nan_zero_log_zero or sem.nan_nonfinite_row_grad
        view = _rows_view(p) if inplace and not quirky else None
        loss, g2 = forward(p, True, view)
        if inplace:
            if view is None:  # N-D logits (the rows were a copy), or the quirks read them
                x.copy_(p.to_layout(g2))
            torch.autograd.graph.increment_version(x)  # (the kernel wrote through a pointer)
            grad = x
        else:
            grad = p.to_layout(g2)
        ctx.opts, ctx.inplace, ctx.given_away = opts, inplace, False
        ctx.save_for_backward(grad, None if inplace else x, target, weight)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        from ..torch._autograd import _inplace_once, differentiable_grad, problem

        if ctx.inplace and (ctx.given_away or torch.is_grad_enabled()):
            raise RuntimeError(_inplace_once(ctx.given_away))
        grad, x, target, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            return (
                differentiable_grad(x, target, weight, ctx.opts, grad_output),
                None,
                None,
                None,
                None,
            )
        if ctx.given_away:  # retain_graph: the first gradient is the caller's; recompute
            p = problem(x, target, weight, ctx.opts)
            grad = p.to_layout(forward(p, True)[1])
        else:
            ctx.given_away = True
            grad = grad if ctx.inplace else grad.data
        return _scaled(grad, grad_output), None, None, None, None


def _scaled(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """``grad * grad_output`` in place (per position for ``reduction="none"``)."""
    if grad.dim() == 2 and (grad.shape[1] <= 1 or grad.stride(1) == 1):
        return launchers().scale_rows(grad, grad_output)
    scale = grad_output if grad_output.dim() == 0 else grad_output.unsqueeze(1)
    return grad.mul_(scale)


def loss(x: torch.Tensor, target: torch.Tensor, weight: Any, opts: LossOptions, inplace: bool):
    """The loss of checked, batched tensors (class dim 1) on the Triton path."""
    if torch.is_grad_enabled() and x.requires_grad:
        return TritonCrossEntropy.apply(x, target, weight, opts, inplace)
    from ..torch._autograd import problem

    return forward(problem(x, target, weight, opts), False)[0]
