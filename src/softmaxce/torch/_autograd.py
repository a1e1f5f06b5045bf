"""Autograd for the two paths of ``softmaxce.torch.cross_entropy``.

* ``FusedCrossEntropy`` (CPU tensors): the forward runs a fused kernel (``_ops``) that
  gives the loss *and* the gradient in one pass; the backward only scales that gradient by
  ``grad_output``.
* ``CoreCrossEntropy`` (any device): the forward computes the per-row statistics and the
  loss with the core (``softmaxce._core``) on the tensors themselves; the backward turns the
  statistics into the gradient with the core's ``row_grad``. Nothing is copied to the host.

Both take the double backward (``create_graph=True``) through ``differentiable_grad``:
the core's gradient recomputed from the logits with autograd recording, so that it can be
differentiated again. Gradients with respect to a probability target or class weights take
plain autograd through the core's forward (``core_loss``).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _run
from .._core import rows
from .._options import LossOptions
from .._problem import Problem, problem_of
from . import _ops
from ._checks import Call, check_values


def problem(x: torch.Tensor, target: torch.Tensor, weight: Any, opts: LossOptions) -> Problem:
    """The core's problem of checked, batched tensors (class dim 1), on their device."""
    t = target if target.is_floating_point() else target.long()
    return problem_of(x, t, opts, axis=1, weight=weight)


def differentiable_grad(x, target, weight, opts: LossOptions, grad_output) -> torch.Tensor:
    """``grad_output * d loss / d x`` as torch ops of ``x`` and ``grad_output`` that autograd
    records, so that it can be differentiated again (second order and beyond)."""
    with torch.enable_grad():
        p = _run.for_autograd(problem(x, target, weight, opts))
        return _run.core_grad(p, _run.core_state(p), grad_output)


def core_loss(x, target, weight, opts: LossOptions) -> torch.Tensor:
    """The loss as plain torch ops of the core: autograd differentiates it with respect to
    every input that requires grad (logits, a probability target, class weights)."""
    p = _run.for_autograd(problem(x, target, weight, opts))
    return _run.core_loss(p, _run.core_state(p))


def _flat_state(state: _run.CoreState) -> tuple:
    return (state.ctx.keep, state.ctx.spread, state.total, *state.stats)


def _unflat_state(saved: tuple) -> _run.CoreState:
    keep, spread, total, *stats = saved
    return _run.CoreState(rows.RowContext(keep, spread), total, rows.RowStats(*stats))


class CoreCrossEntropy(torch.autograd.Function):
    """The core on torch tensors: forward keeps the (N,) statistics, backward is ``row_grad``."""

    @staticmethod
    def forward(ctx, x, target, weight, opts):
        p = problem(x, target, weight, opts)
        state = _run.core_state(p)
        ctx.opts = opts
        ctx.save_for_backward(x, target, weight, *_flat_state(state))
        return _run.core_loss(p, state)

    @staticmethod
    def backward(ctx, grad_output):
        x, target, weight, *saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            g = differentiable_grad(x, target, weight, ctx.opts, grad_output)
        else:
            p = problem(x, target, weight, ctx.opts)
            g = _run.core_grad(p, _unflat_state(tuple(saved)), grad_output)
        return g, None, None, None


class FusedCrossEntropy(torch.autograd.Function):
    """Forward: loss and gradient in one fused pass. Backward: the saved gradient times
    ``grad_output``; with ``create_graph=True`` the core's gradient, differentiable.

    The first backward gives the saved gradient away, without a copy: it returns it as is for
    ``grad_output == 1`` and scales it in place otherwise. From then on it belongs to the caller,
    who may change it, as they may change what ``F.cross_entropy`` returns; it is never read
    again. A later backward (``retain_graph=True``) recomputes the gradient from the saved input,
    or raises with ``inplace_backward``, whose gradient is the input's storage.
    """

    @staticmethod
    def forward(ctx, input, target, weight, opts, kernel, inplace):
        if inplace:
            # The custom op declares that it mutates ``input``, which bumps its version
            # counter: any other node that saved the logits raises in its backward instead
            # of silently using the gradient as logits.
            loss = _ops.ce_grad_(input, target, weight, *opts.flat(), kernel=kernel)
            grad = input
        else:
            loss, grad = _ops.ce_grad(input, target, weight, *opts.flat(), kernel=kernel)
        ctx.opts, ctx.kernel, ctx.inplace, ctx.given_away = opts, kernel, inplace, False
        ctx.save_for_backward(grad, None if inplace else input, target, weight)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.inplace and (ctx.given_away or torch.is_grad_enabled()):
            # (before unpacking: the first backward scaled the saved gradient in place)
            raise RuntimeError(_inplace_once(ctx.given_away))
        grad, input, target, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            g = differentiable_grad(input, target, weight, ctx.opts, grad_output)
            return g, None, None, None, None, None
        scale = grad_output if grad_output.dim() == 0 else grad_output.unsqueeze(1)
        if torch.compiler.is_compiling():
            return grad * scale, None, None, None, None, None
        if ctx.given_away:
            grad = _ops.run_fused(
                input, target, weight, ctx.opts, ctx.kernel, want_grad=True, inplace=False,
                check=False,
            )[1]  # fmt: skip
        else:
            ctx.given_away = True
            # Out of place, ``.data`` gives the caller's tensor a version counter of its own: a
            # change to it must not fail the version check of the saved tensors in a later
            # backward, which only reads the input.
            grad = grad if ctx.inplace else grad.data
        # (``bool`` would be a host sync on other devices; the fused path runs on CPU only)
        unit = grad_output.dim() == 0 and bool(grad_output == 1)
        return (grad if unit else grad.mul_(scale)), None, None, None, None, None


def _inplace_once(given_away: bool) -> str:
    if given_away:
        return (
            "softmaxce.torch.cross_entropy(inplace_backward=True): the backward can run only "
            "once (the gradient lives in the input's storage, which the first backward gave "
            "away); use inplace_backward=False with retain_graph=True"
        )
    return (
        "softmaxce.torch.cross_entropy(inplace_backward=True) has no double backward: the "
        "input's values were overwritten by the gradient; use inplace_backward=False"
    )


def loss(call: Call, x: torch.Tensor, target: torch.Tensor, weight: Any, inplace: bool):
    """The loss of a checked call on batched tensors (class dim 1), through the autograd node
    that its path and the tensors that require grad ask for."""
    grad_mode = torch.is_grad_enabled()
    opts = call.opts
    if call.path == "fused":
        if grad_mode and x.requires_grad:
            return FusedCrossEntropy.apply(x, target, weight, opts, call.kernel, inplace)
        return _ops.ce(x, target, weight, *opts.flat(), kernel=call.kernel)
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        _check_host_values(x, target, weight, opts)
    if call.path == "triton":
        from .._triton._torch import loss as triton_loss

        return triton_loss(x, target, weight, opts, inplace)
    if grad_mode and (target.requires_grad or (weight is not None and weight.requires_grad)):
        return core_loss(x, target, weight, opts)
    if grad_mode and x.requires_grad:
        return CoreCrossEntropy.apply(x, target, weight, opts)
    p = problem(x, target, weight, opts)
    return _run.core_loss(p, _run.core_state(p))


def _check_host_values(x, target, weight, opts: LossOptions) -> None:
    """The data checks of the core path, where the data is on the host (CPU, not traced)."""
    labels = None if target.is_floating_point() else target.numpy()
    w = None if weight is None else weight.detach().to(torch.float64).numpy()
    check_values(labels, w, x.shape[1], opts)
