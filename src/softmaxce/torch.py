r"""PyTorch front end: :func:`cross_entropy` and :class:`CrossEntropyLoss`.

Drop-in for ``torch.nn.functional.cross_entropy`` (class dim 1, N-D and unbatched inputs, index
and probability targets, ``weight``, ``ignore_index``, ``reduction``, ``label_smoothing``) plus
``z_loss``, ``softcap`` and ``inplace_backward``.

How it runs:

* **CPU tensors** (float16, float32, float64; bfloat16 through a float32 copy): one fused pass of
  :func:`softmaxce._api.fused` on the tensor's own memory (``Tensor.numpy()``, no copy) computes
  the loss *and* the gradient in the forward; the backward only scales the saved gradient by
  ``grad_output`` (in place: the first backward gives it away; a later one, with
  ``retain_graph=True``, recomputes it). The kernel is whatever ``softmaxce._dispatch`` picks
  (NumPy core or numba). With ``inplace_backward=True`` the gradient is written into the
  input's storage.
* **Other devices** (CUDA, ...): a pure-PyTorch implementation of the same math
  (``log_softmax``-based, every option), differentiated by autograd. Nothing is copied to the
  host.
* **Double backward** (``create_graph=True``): the backward recomputes the gradient with the
  pure-PyTorch implementation, so it is differentiable again.
* **torch.compile**: the fused kernels are registered as ``torch.library.custom_op``
  (``softmaxce::cross_entropy``, ``softmaxce::cross_entropy_with_grad`` and the in-place
  ``softmaxce::cross_entropy_with_grad_``) with fake implementations, so
  ``torch.compile(fullgraph=True)`` traces them without a graph break.

>>> import torch, softmaxce.torch as sct
>>> x = torch.tensor([[2.0, 1.0, 0.1], [0.0, 0.0, 1e6]], requires_grad=True)
>>> loss = sct.cross_entropy(x, torch.tensor([0, 2]))
>>> round(loss.item(), 6)
0.20851
>>> loss.backward()
>>> x.grad
tensor([[-0.1705,  0.1212,  0.0493],
        [ 0.0000,  0.0000,  0.0000]])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import _api
from . import _validate as v

__all__ = ["CrossEntropyLoss", "cross_entropy"]

# Devices whose tensors go through the fused NumPy/numba kernels; every other device takes the
# pure-PyTorch path (tests empty this set to force that path on CPU).
_FUSED_DEVICES = frozenset({"cpu"})

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INDEX_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

# How "mean" normalises, what W == 0 gives and whether class weights may be negative, per
# semantics (the ``mean_by`` / ``empty`` / ``negative_weight`` knobs of
# ``softmaxce._api.fused``), checked against live F.cross_entropy in the tests:
#   semantics -> (mean_by for index targets, mean_by for probability targets, empty,
#                 negative_weight)
# PyTorch divides index targets by sum_i w[t_i] over non-ignored positions (the SPEC's "mass")
# but probability targets by the number of positions, gives NaN when that is 0, and accepts
# negative class weights.
_SEMANTICS = {
    "softmaxce": ("mass", "mass", "zero", False),
    "torch": ("mass", "positions", "nan", True),
}


# --------------------------------------------------------------------------------------------
# Validation, once, at the public boundary
# --------------------------------------------------------------------------------------------


def _check(
    input: Any,
    target: Any,
    weight: Any,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    inplace_backward: Any,
    semantics: Any,
) -> tuple[bool, tuple[Any, ...]]:
    """Static checks (types, dtypes, shapes, devices, options). Returns (is_index, opts).

    ``opts`` is the tuple of scalar options in the custom ops' order, with ``semantics``
    resolved to ``mean_by`` and ``empty``.
    """
    if not isinstance(input, torch.Tensor):
        msg = f"input must be a torch.Tensor, got {type(input).__name__}"
        raise TypeError(msg)
    if input.dtype not in _FLOAT_DTYPES:
        msg = (
            f"input must be a float tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {input.dtype}"
        )
        raise TypeError(msg)
    if input.dim() == 0:
        msg = "input must have at least one dimension (the classes), got a 0-d tensor"
        raise ValueError(msg)
    class_dim = 0 if input.dim() == 1 else 1
    n_classes = input.shape[class_dim]
    if n_classes == 0:
        msg = (
            f"input must have at least one class along dim {class_dim}, "
            f"got shape {tuple(input.shape)}"
        )
        raise ValueError(msg)

    if not isinstance(target, torch.Tensor):
        msg = f"target must be a torch.Tensor, got {type(target).__name__}"
        raise TypeError(msg)
    if target.device != input.device:
        msg = f"target must be on the input's device {input.device}, got {target.device}"
        raise ValueError(msg)
    if target.dtype == torch.bool:
        msg = (
            "target must be integer class indices or a float distribution, got a bool tensor; "
            "use .long() for indices or .float() for a one-hot distribution"
        )
        raise TypeError(msg)
    if target.is_floating_point():
        index = False
        if target.shape != input.shape:
            msg = (
                f"target: a float (probability) target must have the input's shape "
                f"{tuple(input.shape)}, got {tuple(target.shape)}"
            )
            raise ValueError(msg)
    elif target.dtype in _INDEX_DTYPES:
        index = True
        batch_shape = input.shape[:class_dim] + input.shape[class_dim + 1 :]
        if target.shape != batch_shape:
            msg = (
                f"target: integer class indices must have the input's shape without the class "
                f"dim {class_dim}, i.e. {tuple(batch_shape)}, got {tuple(target.shape)}"
            )
            raise ValueError(msg)
    else:
        msg = f"target must be an integer or float tensor, got dtype {target.dtype}"
        raise TypeError(msg)

    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            msg = (
                f"weight must be None or a torch.Tensor of shape ({n_classes},), "
                f"got {type(weight).__name__}"
            )
            raise TypeError(msg)
        if not weight.is_floating_point():
            msg = f"weight must be a float tensor of shape ({n_classes},), got dtype {weight.dtype}"
            raise TypeError(msg)
        if weight.shape != (n_classes,):
            msg = (
                f"weight must have shape ({n_classes},) (one per class), "
                f"got shape {tuple(weight.shape)}"
            )
            raise ValueError(msg)
        if weight.device != input.device:
            msg = f"weight must be on the input's device {input.device}, got {weight.device}"
            raise ValueError(msg)

    sem = v.choice(semantics, tuple(_SEMANTICS), "semantics")
    by_index, by_prob, empty, negative_weight = _SEMANTICS[sem]
    ignore = v.ignore_index(ignore_index)  # outside int64: NO_IGNORE, nothing is ignored
    if sem == "torch" and not index and ignore != -100:
        # F.cross_entropy refuses it rather than ignoring it; softmaxce semantics ignore it.
        msg = (
            f"ignore_index={ignore} has no meaning for a float (probability) target, and "
            f"semantics='torch' refuses it as F.cross_entropy does; leave it at -100"
        )
        raise ValueError(msg)
    opts = (
        ignore,
        v.choice(reduction, v.REDUCTIONS, "reduction"),
        v.label_smoothing(label_smoothing),
        v.z_loss(z_loss),
        v.softcap(softcap),
        by_index if index else by_prob,
        empty,
        negative_weight,
    )

    if not isinstance(inplace_backward, bool):
        msg = f"inplace_backward must be a bool, got {type(inplace_backward).__name__}"
        raise TypeError(msg)
    if inplace_backward:
        if not input.is_contiguous():
            msg = (
                "inplace_backward=True needs a contiguous input to hold the gradient; "
                "call .contiguous() or pass inplace_backward=False"
            )
            raise ValueError(msg)
        # (not under torch.compile, which cannot trace ``_is_view``; AOTAutograd has its own
        # check of in-place changes to leaves)
        base = input
        if not torch.compiler.is_compiling() and input._is_view():
            base = input._base
        if base.requires_grad and base.is_leaf:
            msg = (
                "inplace_backward=True overwrites the input with its gradient, but the input is "
                "a leaf tensor that requires grad (or a view of one), which PyTorch never "
                "modifies in place; pass the output of a layer or use inplace_backward=False"
            )
            raise ValueError(msg)
    return index, opts


def _check_values(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: Any,
    index: bool,
    ignore_index: int,
    allow_negative: bool,
) -> None:
    """Data-dependent checks for the pure-PyTorch path (labels in range, weights finite and,
    unless ``allow_negative``, >= 0).

    Only on CPU and outside torch.compile: elsewhere they would cost a host sync (the fused
    path runs the same checks in ``softmaxce._api.fused``).
    """
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return
    if index:
        n_classes = x.shape[1]
        bad = ((target < 0) | (target >= n_classes)) & (target != ignore_index)
        if bool(bad.any()):
            pos = tuple(int(i) for i in bad.nonzero()[0])
            msg = (
                f"target must hold class indices in [0, {n_classes}) or ignore_index="
                f"{ignore_index}; got {int(target[pos])} at position {pos}"
            )
            raise ValueError(msg)
    if weight is not None:
        w = weight.detach().to(torch.float64).numpy()
        v.class_weight(w, weight.shape[0], allow_negative=allow_negative)


# --------------------------------------------------------------------------------------------
# The fused CPU kernels as custom ops
# --------------------------------------------------------------------------------------------


def _run_fused(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    mean_by: str,
    empty: str,
    negative_weight: bool,
    want_grad: bool,
    inplace: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``softmaxce._api.fused`` on the tensors' memory, class axis 1.

    Returns (loss, grad): grad is None without ``want_grad``, and is ``x`` itself in place.
    bfloat16 has no NumPy dtype: it is computed on a float32 copy (the gradient is computed in
    that copy, then rounded into the result, or into ``x`` in place).
    """
    bf16 = x.dtype == torch.bfloat16
    xa = x.to(torch.float32, memory_format=torch.contiguous_format).numpy() if bf16 else x.numpy()
    if target.dtype == torch.bfloat16:
        ta = target.to(torch.float32).numpy()
    else:
        ta = target.numpy()
    wa = None if weight is None else weight.to(torch.float64).numpy()
    loss, grad = _api.fused(
        xa,
        ta,
        want_grad=want_grad,
        dloss=None,
        # the float32 copy of a bfloat16 input is ours: fill it with the gradient
        inplace=want_grad and (inplace or bf16),
        backend="auto",
        axis=1,
        weight=wa,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        where=None,
        soft_target_loss="cross-entropy",
        mean_by=mean_by,
        empty=empty,
        negative_weight=negative_weight,
    )
    loss_t = torch.from_numpy(np.array(loss))
    if bf16:
        loss_t = loss_t.to(torch.bfloat16)
    if grad is None:
        return loss_t, None
    if reduction == "mean" and empty == "nan" and weight is not None and ta.dtype.kind != "f":
        # PyTorch: non-ignored positions whose class weights are all 0 give W = 0 and a NaN
        # gradient (0 * inf); only an all-ignored batch gives gradient 0.
        keep = ta != ignore_index
        if keep.any() and wa[ta[keep].astype(np.int64)].sum() == 0:  # type: ignore[index]
            np.moveaxis(grad, 1, -1)[keep] = np.nan
    if inplace:
        if bf16:
            x.copy_(torch.from_numpy(grad))
        return loss_t, x
    g = torch.from_numpy(grad)
    return loss_t, (g.to(torch.bfloat16) if bf16 else g.contiguous())


def _loss_shape(x: torch.Tensor, reduction: str) -> tuple[int, ...]:
    return (x.shape[0], *x.shape[2:]) if reduction == "none" else ()


@torch.library.custom_op("softmaxce::cross_entropy", mutates_args=())
def _ce_op(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    mean_by: str,
    empty: str,
    negative_weight: bool,
) -> torch.Tensor:
    """The loss only (no gradient is computed)."""
    loss, _ = _run_fused(
        input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
        mean_by, empty, negative_weight, want_grad=False, inplace=False,
    )  # fmt: skip
    return loss


@_ce_op.register_fake
def _(input, target, weight, ignore_index, reduction, *options):
    return input.new_empty(_loss_shape(input, reduction))


@torch.library.custom_op("softmaxce::cross_entropy_with_grad", mutates_args=())
def _ce_grad_op(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    mean_by: str,
    empty: str,
    negative_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and d loss / d input (contiguous, for grad_output = 1), one fused pass."""
    loss, grad = _run_fused(
        input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
        mean_by, empty, negative_weight, want_grad=True, inplace=False,
    )  # fmt: skip
    return loss, grad  # type: ignore[return-value]


@_ce_grad_op.register_fake
def _(input, target, weight, ignore_index, reduction, *options):
    return input.new_empty(_loss_shape(input, reduction)), input.new_empty(input.shape)


@torch.library.custom_op("softmaxce::cross_entropy_with_grad_", mutates_args=("input",))
def _ce_grad_inplace_op(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    mean_by: str,
    empty: str,
    negative_weight: bool,
) -> torch.Tensor:
    """The loss; d loss / d input (for grad_output = 1) overwrites ``input``."""
    loss, _ = _run_fused(
        input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
        mean_by, empty, negative_weight, want_grad=True, inplace=True,
    )  # fmt: skip
    return loss


@_ce_grad_inplace_op.register_fake
def _(input, target, weight, ignore_index, reduction, *options):
    return input.new_empty(_loss_shape(input, reduction))


# --------------------------------------------------------------------------------------------
# The same math in plain PyTorch (other devices, double backward, grads for target / weight)
# --------------------------------------------------------------------------------------------


def _xmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a * b`` with ``0 * inf = 0`` (as the core: a term with target mass 0 vanishes even
    where the logit is ``-inf``). A plain product otherwise, so that a NaN upstream gradient
    still reaches ``b`` through a zero coefficient, as in PyTorch (``semantics="torch"``)."""
    return a * torch.where((a == 0) & torch.isinf(b), 0.0, b)


def _reference(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    mean_by: str,
    empty: str,
    negative_weight: bool,
) -> torch.Tensor:
    """Softmax cross-entropy of batched ``x`` (class dim 1) in PyTorch ops, differentiable to
    any order in ``x``, ``target`` (probabilities) and ``weight``. Same formulas as SPEC §1:
    ``L_i = sum_c w_c q_ic (lse_i - z_ic) + z_loss lse_i^2`` with ``q`` the smoothed target,
    computed with ``log_softmax`` in at least float32. (``negative_weight`` only matters to
    validation: these formulas hold for any sign.)"""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    eps = label_smoothing
    n_classes = x.shape[1]
    bshape = (1, n_classes) + (1,) * (x.dim() - 2)
    w = None if weight is None else weight.to(acc).reshape(bshape)
    # the target side first: which positions count, and the mean's denominator W
    if target.is_floating_point():
        y = target.to(acc)
        mass = (y if w is None else y * w).sum(1)
        valid = None
    else:
        valid = target != ignore_index
        t = torch.where(valid, target, 0).long()
        wt = torch.ones(t.shape, dtype=acc, device=x.device) if w is None else weight.to(acc)[t]
        mass = torch.where(valid, wt, 0.0)
    denom = None
    if reduction == "mean":
        if mean_by == "mass":
            denom = mass.sum()
        else:  # "positions"
            denom = torch.full((), float(mass.numel()), dtype=acc, device=x.device)
    z = x.to(acc)
    if empty == "zero":
        z = _silence(z, valid, None if denom is None else denom == 0)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    logp = torch.log_softmax(z, 1)  # z_c - lse
    if valid is None:
        q = y * (1.0 - eps) + eps / n_classes if eps else y
        rows = -_xmul(q if w is None else q * w, logp).sum(1)
    else:
        nll = -logp.gather(1, t.unsqueeze(1)).squeeze(1)
        rows = _xmul((1.0 - eps) * wt, nll)
        if eps:
            w_all = torch.ones(bshape, dtype=acc, device=x.device) if w is None else w
            rows = rows - (eps / n_classes) * _xmul(w_all.expand_as(logp), logp).sum(1)
    if z_loss:
        lse = torch.logsumexp(z, 1)
        rows = rows + z_loss * lse * lse
    if valid is not None:
        rows = torch.where(valid, rows, 0.0)
    if denom is None:
        return (rows if reduction == "none" else rows.sum()).to(x.dtype)
    return _mean(rows.sum(), denom, empty).to(x.dtype)


def _silence(
    z: torch.Tensor, valid: torch.Tensor | None, empty_batch: torch.Tensor | None
) -> torch.Tensor:
    """The logits with those of positions that carry no weight set to 0: ignored positions, and
    every position when the mean's ``W`` is 0 (``empty_batch``). Their loss is 0 by the
    formulas; this makes their gradient exactly 0 as well, also where a logit is NaN or inf: a
    zero upstream gradient does not stop a NaN in the backward of ``log_softmax``
    (``0 - exp(NaN) * 0``). softmaxce semantics only; PyTorch's keeps the NaN."""
    if valid is None and empty_batch is None:
        return z
    if valid is None:
        keep = ~empty_batch
    else:
        keep = valid.unsqueeze(1) if empty_batch is None else valid.unsqueeze(1) & ~empty_batch
    return torch.where(keep, z, 0.0)


def _mean(total: torch.Tensor, denom: torch.Tensor, empty: str) -> torch.Tensor:
    """``total / denom``, with ``denom == 0`` giving NaN (``empty="nan"``) or 0 (``"zero"``)."""
    empty_batch = denom == 0
    if empty == "nan":
        # PyTorch: W == 0 gives NaN (and a NaN gradient unless every position is ignored).
        return total / torch.where(empty_batch, math.nan, denom)
    # W == 0: loss 0 and gradient 0, never NaN (the safe denominator keeps 0/0 out of the
    # backward as well).
    return torch.where(empty_batch, 0.0, total / torch.where(empty_batch, 1.0, denom))


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------


class _FusedCrossEntropy(torch.autograd.Function):
    """Forward: loss and gradient in one fused pass. Backward: the saved gradient times
    ``grad_output``; with ``create_graph=True`` the pure-PyTorch gradient, differentiable.

    The first backward gives the saved gradient away, without a copy: it returns it as is for
    ``grad_output == 1`` and scales it in place otherwise. From then on it belongs to the caller,
    who may change it, as they may change what ``F.cross_entropy`` returns; it is never read
    again. A later backward (``retain_graph=True``) recomputes the gradient from the saved input,
    or raises with ``inplace_backward``, whose gradient is the input's storage.
    """

    @staticmethod
    def forward(ctx, input, target, weight, opts, inplace):
        if inplace:
            # The custom op declares that it mutates ``input``, which bumps its version
            # counter: any other node that saved the logits raises in its backward instead
            # of silently using the gradient as logits.
            loss = _ce_grad_inplace_op(input, target, weight, *opts)
            grad = input
        else:
            loss, grad = _ce_grad_op(input, target, weight, *opts)
        ctx.opts = opts
        ctx.inplace = inplace
        ctx.given_away = False
        if inplace:
            ctx.save_for_backward(grad, None, target, weight)
        else:
            ctx.save_for_backward(grad, input, target, weight)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.inplace and ctx.given_away:
            msg = (
                "softmaxce.torch.cross_entropy(inplace_backward=True): the backward can run only "
                "once (the gradient lives in the input's storage, which the first backward gave "
                "away); use inplace_backward=False with retain_graph=True"
            )
            raise RuntimeError(msg)
        grad, input, target, weight = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True: recompute the gradient with differentiable PyTorch ops.
            if ctx.inplace:
                msg = (
                    "softmaxce.torch.cross_entropy(inplace_backward=True) has no double "
                    "backward: the input's values were overwritten by the gradient; use "
                    "inplace_backward=False"
                )
                raise RuntimeError(msg)
            with torch.enable_grad():
                loss = _reference(input, target, weight, *ctx.opts)
                (g,) = torch.autograd.grad(loss, input, grad_output, create_graph=True)
            return g, None, None, None, None
        scale = grad_output if grad_output.dim() == 0 else grad_output.unsqueeze(1)
        if torch.compiler.is_compiling():
            return grad * scale, None, None, None, None
        if ctx.given_away:
            grad = _run_fused(input, target, weight, *ctx.opts, want_grad=True, inplace=False)[1]
        else:
            ctx.given_away = True
            # Out of place, ``.data`` gives the caller's tensor a version counter of its own: a
            # change to it must not fail the version check of the saved tensors in a later
            # backward, which only reads the input.
            grad = grad if ctx.inplace else grad.data
        # (``bool`` would be a host sync on other devices; the fused path runs on CPU only)
        unit = (
            grad_output.dim() == 0 and grad_output.device.type == "cpu" and bool(grad_output == 1)
        )
        return (grad if unit else grad.mul_(scale)), None, None, None, None


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    inplace_backward: bool = False,
    semantics: str = "softmaxce",
) -> torch.Tensor:
    r"""Softmax cross-entropy between logits ``input`` and ``target``, as ``F.cross_entropy``.

    The classes are dim 1 of ``input`` (shape ``(N, C)``, ``(N, C, d1, ...)``, or ``(C,)``
    unbatched). ``target`` holds class indices (an integer tensor of the input's shape without
    dim 1, values in ``[0, C)`` or ``ignore_index``) or a distribution over the classes (a
    float tensor of the input's shape). Per position ``i``:

    .. math::
        z = s \tanh(x / s) \text{ (softcap } s\text{)}, \quad
        L_i = v_i \sum_c w_c q_{ic} (\mathrm{lse}(z_i) - z_{ic}) + v_i\,\zeta\,\mathrm{lse}(z_i)^2

    with ``q = (1 - eps) y + eps / C`` (``y`` the one-hot target or the distribution,
    ``eps = label_smoothing``), ``w = weight``, ``zeta = z_loss`` and ``v_i = 0`` where the index
    target equals ``ignore_index``.

    ``semantics`` chooses how ``reduction="mean"`` normalises:

    * ``"softmaxce"`` (default, SPEC §1): divide by ``W = sum_i v_i sum_c w_c y_ic``, so index
      targets and their one-hot float targets agree, also with class weights; ``W == 0``
      (everything ignored, empty batch) gives loss 0 and gradient 0, never NaN.
    * ``"torch"``: exactly ``F.cross_entropy``: index targets divide by ``sum_i v_i w[t_i]``,
      probability targets by the number of positions, ``W == 0`` gives NaN, and negative
      class weights are accepted (the default rejects them, SPEC §4).

    The two agree for index targets except when ``W == 0``. Known deviations from
    ``F.cross_entropy`` in both modes: a term with target probability (times weight) 0 is 0 even
    where the logit is ``-inf`` (PyTorch: ``0 * inf = NaN``); weights must be finite; any
    integer dtype is accepted for class indices; float16/bfloat16 are accumulated in float32
    without rounding the intermediate log-probabilities, so the result is slightly more exact.

    Gradients: with respect to ``input`` (and, through the pure-PyTorch path, to a probability
    ``target`` or ``weight`` that requires grad). On CPU the forward computes the gradient in the
    same fused pass and the backward only scales it by ``grad_output`` (the returned gradient is
    the caller's: a later backward with ``retain_graph=True`` recomputes it); double backward
    (``create_graph=True``) recomputes it with PyTorch ops. Other devices use the pure-PyTorch
    implementation.

    ``inplace_backward=True`` (CPU) writes the gradient into ``input``'s storage during the
    forward, so no ``N x C`` gradient is allocated: **afterwards ``input`` holds the gradient,
    not the logits**. It needs a contiguous input that is not a leaf requiring grad (nor a view
    of one), runs only when a gradient is required (otherwise ``input`` is left alone), and its
    backward runs only once (no ``retain_graph`` reuse, no double backward). On other devices
    it is accepted and changes nothing.

    Examples
    --------
    >>> import torch, softmaxce.torch as sct
    >>> x = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    >>> sct.cross_entropy(x, torch.tensor([2, 0]), reduction="none")
    tensor([0.4076, 2.4076])
    >>> sct.cross_entropy(x, torch.tensor([-100, -100]))  # everything ignored
    tensor(0.)
    >>> sct.cross_entropy(x, torch.tensor([-100, -100]), semantics="torch")
    tensor(nan)

    References
    ----------
    PyTorch ``torch.nn.functional.cross_entropy``; pytorch#107680 (weighted mean of one-hot
    targets), pytorch#70348 (NaN when everything is ignored); Liger-Kernel (gradient in place).
    """
    index, opts = _check(
        input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
        inplace_backward, semantics,
    )  # fmt: skip
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    t = target.unsqueeze(0) if unbatched else target
    grad_mode = torch.is_grad_enabled()
    other_grads = grad_mode and (
        target.requires_grad or (weight is not None and weight.requires_grad)
    )
    if input.device.type not in _FUSED_DEVICES or other_grads:
        _check_values(x, t, weight, index, opts[0], allow_negative=opts[-1])
        loss = _reference(x, t, weight, *opts)
    elif grad_mode and input.requires_grad:
        loss = _FusedCrossEntropy.apply(x, t, weight, opts, inplace_backward)
    else:
        loss = _ce_op(x, t, weight, *opts)
    if unbatched and opts[1] == "none":
        loss = loss.squeeze(0)
    return loss


class CrossEntropyLoss(torch.nn.Module):
    r"""Module form of :func:`cross_entropy`, with the arguments of ``nn.CrossEntropyLoss``.

    ``weight`` is a buffer (it moves with ``.to()``). The legacy ``size_average`` and
    ``reduce`` are rejected with a TypeError: use ``reduction``. ``z_loss``, ``softcap``,
    ``inplace_backward`` and ``semantics`` are as in :func:`cross_entropy`.

    Examples
    --------
    >>> import torch, softmaxce.torch as sct
    >>> loss_fn = sct.CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-4)
    >>> loss_fn
    CrossEntropyLoss(ignore_index=-100, reduction='mean', label_smoothing=0.1, z_loss=0.0001,
                     softcap=None, inplace_backward=False, semantics='softmaxce')
    >>> round(loss_fn(torch.zeros(2, 4), torch.tensor([1, 3])).item(), 6)
    1.386487
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        size_average: Any = None,
        ignore_index: int = -100,
        reduce: Any = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        inplace_backward: bool = False,
        semantics: str = "softmaxce",
    ) -> None:
        super().__init__()
        for name, value in (("size_average", size_average), ("reduce", reduce)):
            if value is not None:
                msg = (
                    f"{name} is a legacy argument of nn.CrossEntropyLoss that softmaxce does not "
                    f"support; got {name}={value!r}; use reduction='mean', 'sum' or 'none'"
                )
                raise TypeError(msg)
        if weight is not None and not isinstance(weight, torch.Tensor):
            msg = f"weight must be None or a torch.Tensor, got {type(weight).__name__}"
            raise TypeError(msg)
        if not isinstance(inplace_backward, bool):
            msg = f"inplace_backward must be a bool, got {type(inplace_backward).__name__}"
            raise TypeError(msg)
        self.register_buffer("weight", weight)
        self.ignore_index = v.integer(ignore_index, "ignore_index")
        self.reduction = v.choice(reduction, v.REDUCTIONS, "reduction")
        self.label_smoothing = v.label_smoothing(label_smoothing)
        self.z_loss = v.z_loss(z_loss)
        self.softcap = v.softcap(softcap)
        self.inplace_backward = inplace_backward
        self.semantics = v.choice(semantics, tuple(_SEMANTICS), "semantics")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(
            input,
            target,
            self.weight,
            self.ignore_index,
            self.reduction,
            self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            inplace_backward=self.inplace_backward,
            semantics=self.semantics,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"softcap={self.softcap}, inplace_backward={self.inplace_backward}, "
            f"semantics={self.semantics!r}"
        )
