r"""Fused linear + cross-entropy on PyTorch tensors (``docs/linear.md``).

The blocked loss of ``softmaxce._linear`` with ``torch.mm`` / ``torch.addmm`` as its
products (MKL or OpenBLAS on the CPU, cuBLAS on CUDA). On CPU tensors the rows of each block
run on the host kernels (the numba kernel in place on the block's memory, through
``Tensor.numpy()``); on other devices (or ``backend="core"``) the core on the block tensors.
The whole call is one ``torch.library`` custom op with a fake implementation, so
``torch.compile(fullgraph=True)`` traces it without a graph break; an autograd Function over
it gives the gradients of ``input``, ``linear_weight`` and ``linear_bias``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _linear
from .. import _validate as v
from .._options import FLAT_FIELDS, LossOptions
from .._problem import problem_of
from . import _autograd, _ops
from ._checks import check_call, check_values

__all__ = ["LinearCrossEntropyLoss", "linear_cross_entropy"]


class TorchMats:
    """The products of the blocked loss on torch tensors (see ``_linear.NumpyMats``).

    ``mm``: the dtype of the products' operands (the input's); ``acc``: the blocks' dtype
    (float32, float64 for float64). For float16/bfloat16 the logits are computed in their
    dtype (the platform accumulates in float32), converted into a float32 block for the
    cross-entropy, and its gradient rounded once back for ``dinput = g @ W``; ``dW`` is
    accumulated in float32 from the float32 gradient. ``host``: the rows run on the host
    kernels, which see each block through ``Tensor.numpy()`` (the same memory).
    """

    def __init__(self, mm: torch.dtype, acc: torch.dtype, device: Any, host: bool) -> None:
        self.mm, self.acc, self.device, self.host = mm, acc, device, host

    def buffers(self, size: int) -> tuple:
        make = [self.acc] if self.mm == self.acc else [self.mm, self.acc]
        return tuple(torch.empty((size,), dtype=d, device=self.device) for d in make)

    def ce_view(self, block: torch.Tensor) -> Any:
        return block.numpy() if self.host else block

    def from_ce(self, g: Any) -> torch.Tensor:
        return torch.from_numpy(g) if isinstance(g, np.ndarray) else g

    @staticmethod
    def logits(h, w, b, out) -> None:
        if b is None:
            torch.mm(h, w.t(), out=out)
        else:
            torch.addmm(b, h, w.t(), out=out)

    @staticmethod
    def convert(src, dst, b) -> None:
        dst.copy_(src)
        if b is not None:
            dst.add_(b)

    @staticmethod
    def dinput(g, w, out, add: bool) -> None:
        if g.dtype != out.dtype:  # (half precision operands, float32 gradient rows)
            part = torch.mm(g, w)
            out.add_(part) if add else out.copy_(part)
        elif add:
            out.addmm_(g, w)
        else:
            torch.mm(g, w, out=out)

    def dweight(self, g, h, out, add: bool) -> None:
        h = h.to(self.acc)  # (a float32 copy of a half precision block of rows)
        if add:
            out.addmm_(g.t(), h)
        else:
            torch.mm(g.t(), h, out=out)

    @staticmethod
    def dbias(g, out, add: bool) -> None:
        if add:
            out.add_(g.sum(0))
        else:
            torch.sum(g, 0, out=out)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


_NP = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def _host_problem(n, n_classes, dtype, target, weight, opts):
    """The loss problem of the host rows: NumPy views of the tensors (labels checked here)."""
    t = (target.to(torch.float32) if target.dtype == torch.bfloat16 else target).numpy()
    wa = None if weight is None else weight.detach().to(torch.float64).numpy()
    wa = check_values(None if t.dtype.kind == "f" else t, wa, n_classes, opts)
    if t.dtype.kind != "f":
        t = t.astype(np.int64, copy=False)
    stand_in = np.broadcast_to(np.empty((), dtype=_NP.get(dtype, np.float32)), (n, n_classes))
    return problem_of(stand_in, t, opts, axis=1, weight=wa)


def _device_problem(n, n_classes, dtype, target, weight, opts):
    stand_in = torch.empty((), dtype=dtype, device=target.device).expand(n, n_classes)
    t = target if target.is_floating_point() else target.long()
    return problem_of(stand_in, t, opts, axis=1, weight=weight)


def blocked_job(p, input, w, b, chunk: int, kernel: str, host: bool) -> _linear.Job:
    """The blocked pass over the rows of 2-D ``input`` and the classes of ``w`` (the problem
    ``p`` of its (N, V) stand-in logits): the operands, their products and the block shape
    of the memory rule (``chunk``: logits per block, 0 for the rule)."""
    n, n_classes = input.shape[0], w.shape[0]
    acc = _acc(input.dtype)
    mats = TorchMats(input.dtype, acc, input.device, host)
    block_bytes = acc.itemsize + (0 if input.dtype == acc else input.dtype.itemsize)
    budget = _linear.block_budget(n, n_classes, input.dtype.itemsize, block_bytes, chunk or None)
    h = input.detach().contiguous()
    wc = w.detach().contiguous()
    bc = None if b is None else b.detach().to(acc if input.dtype != acc else b.dtype)
    return _linear.Job(p, h, wc, bc, mats, kernel, _linear.block_shape(n, n_classes, budget))


def new_grads(input, w, b) -> tuple:
    """``(dinput, dW, db or None)`` for the blocked pass to fill, in the accumulation dtype
    (empty: the first row block writes, the others add; zeros when there is no row)."""
    new = {"device": input.device, "dtype": _acc(input.dtype)}
    make = torch.empty if input.shape[0] else torch.zeros
    db = None if b is None else make(b.shape, **new)
    return make(input.shape, **new), make(w.shape, **new), db


def run(input, w, b, target, weight, dloss, opts: LossOptions, chunk: int, kernel: str,
        want_grad: bool):  # fmt: skip
    """``(loss, dinput, dW, db)`` of 2-D ``input`` (empty gradients without ``want_grad``;
    ``db`` empty without a bias); ``kernel`` "core" runs the core on the tensors."""
    n, n_classes = input.shape[0], w.shape[0]
    host = kernel != "core" and input.device.type == "cpu"
    if host:
        p = _host_problem(n, n_classes, input.dtype, target, weight, opts)
        dl = None if dloss is None else dloss.detach().to(torch.float64).numpy()
    else:
        p = _device_problem(n, n_classes, input.dtype, target, weight, opts)
        dl = dloss
    job = blocked_job(p, input, w, b, chunk, "auto" if kernel == "core" else kernel, host)
    grads = new_grads(input, w, b) if want_grad else None
    loss = _linear.run_blocks(job, want_grad=want_grad, dloss=dl, grads=grads)
    loss = torch.as_tensor(np.asarray(loss)) if host else loss
    loss = loss.to(device=input.device, dtype=input.dtype)
    if not want_grad:  # (outputs of a custom op may not alias each other)
        return loss, input.new_empty((0,)), input.new_empty((0,)), input.new_empty((0,))
    dh, dw, db = grads
    db = input.new_empty((0,)) if db is None else db.to(b.dtype)
    return loss, dh.to(input.dtype), dw.to(w.dtype), db


_OPT_ARGS = ", ".join(f"{_ops._FLAT_TYPES[name]} {name}" for name in FLAT_FIELDS)


def _op_impl(input, w, b, target, weight, dloss, *flat, chunk, kernel, want_grad):
    opts = LossOptions.from_flat(*flat)
    return run(input, w, b, target, weight, dloss, opts, chunk, kernel, want_grad)


lce = torch.library.custom_op(
    "softmaxce::linear_cross_entropy",
    _op_impl,
    mutates_args=(),
    schema=(
        "(Tensor input, Tensor linear_weight, Tensor? linear_bias, Tensor target, "
        f"Tensor? weight, Tensor? dloss, {_OPT_ARGS}, *, int chunk, str kernel, "
        "bool want_grad) -> (Tensor, Tensor, Tensor, Tensor)"
    ),
)


@lce.register_fake
def _(input, w, b, target, weight, dloss, *flat, chunk, kernel, want_grad):
    none = LossOptions.from_flat(*flat).reduction == "none"
    loss = input.new_empty((input.shape[0],) if none else ())
    if not want_grad:
        return loss, input.new_empty((0,)), input.new_empty((0,)), input.new_empty((0,))
    db = input.new_empty((0,)) if b is None else b.new_empty(b.shape)
    return loss, input.new_empty(input.shape), w.new_empty(w.shape), db


def _unfused_grads(input, w, b, target, weight, opts, grad_output):
    """The three gradients as differentiable torch ops (double backward): the core's gradient
    of the logits ``F.linear(input, w, b)``, unfused (N x V)."""
    with torch.enable_grad():
        logits = torch.nn.functional.linear(input, w, b)
        g = _autograd.differentiable_grad(logits, target, weight, opts, grad_output)
        return g @ w, g.t() @ input, None if b is None else g.sum(0)


class LinearCrossEntropy(torch.autograd.Function):
    """Forward: the loss and (for a reduction) the three gradients in one blocked pass.
    Backward: those gradients times ``grad_output``; for ``reduction="none"`` the blocked pass
    again with the per-row ``grad_output``; with ``create_graph=True`` the core's gradient,
    unfused and differentiable.

    The first backward gives the saved gradients away (scaled in place, as
    ``softmaxce.torch.cross_entropy`` does); a later one (``retain_graph=True``) recomputes.
    """

    @staticmethod
    def forward(ctx, input, w, b, target, weight, opts, chunk, kernel):
        want = opts.reduction != "none" and any(ctx.needs_input_grad[:3])
        loss, dh, dw, db = lce(input, w, b, target, weight, None, *opts.flat(), chunk=chunk,
                               kernel=kernel, want_grad=want)  # fmt: skip
        ctx.opts, ctx.chunk, ctx.kernel, ctx.given_away, ctx.want = opts, chunk, kernel, False, want
        ctx.save_for_backward(input, w, b, target, weight, dh, dw, db)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        input, w, b, target, weight, dh, dw, db = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            grads = _unfused_grads(input, w, b, target, weight, ctx.opts, grad_output)
            return (*grads, None, None, None, None, None)
        if not ctx.want or ctx.given_away:
            _, dh, dw, db = lce(input, w, b, target, weight, grad_output, *ctx.opts.flat(),
                                chunk=ctx.chunk, kernel=ctx.kernel, want_grad=True)  # fmt: skip
        elif torch.compiler.is_compiling():
            dh, dw, db = dh * grad_output, dw * grad_output, db * grad_output
        else:
            ctx.given_away = True
            dh, dw, db = dh.data, dw.data, db.data
            # (``bool`` is a host sync on other devices: there the product is taken anyway)
            unit = grad_output.device.type == "cpu" and bool(grad_output == 1)
            if not unit:
                dh, dw, db = dh.mul_(grad_output), dw.mul_(grad_output), db.mul_(grad_output)
        return dh, dw, (db if b is not None else None), None, None, None, None, None


def check_operands(input: Any, w: Any, b: Any, *, batch_dims: bool = False) -> None:
    """The shapes, dtypes and devices of the linear layer's operands; ``input`` is ``(N, D)``
    or ``(D,)``, or with ``batch_dims`` any ``(..., D)``."""
    for name, t in (("input", input), ("linear_weight", w), ("linear_bias", b)):
        if t is None and name == "linear_bias":
            continue
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            what = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            msg = f"{name} must be a float torch.Tensor, got {what}"
            raise TypeError(msg)
    if input.dim() == 0 or (input.dim() > 2 and not batch_dims):
        want = "(..., D)" if batch_dims else "(N, D) or (D,) (as F.linear_cross_entropy)"
        msg = f"input must be {want}, got shape {tuple(input.shape)}"
        raise ValueError(msg)
    d = input.shape[-1]
    if w.dim() != 2 or w.shape[1] != d or w.shape[0] == 0:
        msg = f"linear_weight must have shape (V, {d}) with V >= 1, got {tuple(w.shape)}"
        raise ValueError(msg)
    if b is not None and tuple(b.shape) != (w.shape[0],):
        msg = f"linear_bias must have shape ({w.shape[0]},), got {tuple(b.shape)}"
        raise ValueError(msg)
    for name, t in (("linear_weight", w), ("linear_bias", b)):
        if t is not None and (t.dtype != input.dtype or t.device != input.device):
            msg = (
                f"{name} must have the input's dtype {input.dtype} and device {input.device}, "
                f"got {t.dtype} on {t.device}"
            )
            raise TypeError(msg)


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    semantics: str = "softmaxce",
    chunk_size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    r"""``cross_entropy(F.linear(input, linear_weight, linear_bias), target, ...)`` without the
    N x V logits: the signature of ``F.linear_cross_entropy`` plus ``z_loss``, ``softcap``,
    ``semantics``, ``chunk_size`` and ``backend``.

    ``input`` is ``(N, D)`` or ``(D,)``, ``linear_weight`` ``(V, D)``, ``linear_bias`` ``(V,)``,
    ``target`` class indices ``(N,)`` or a distribution ``(N, V)``. The options are those of
    ``softmaxce.torch.cross_entropy`` (``semantics="torch"`` gives exactly
    ``F.linear_cross_entropy``). ``chunk_size``: logits per block (None: the memory rule of
    ``docs/linear.md``). ``backend``: ``"auto"`` (the host kernels on CPU tensors, the core on
    the tensors elsewhere), ``"numba"``/``"numpy"`` (CPU only) or ``"core"``.

    Gradients reach ``input``, ``linear_weight`` and ``linear_bias``; they are computed in the
    forward for a reduction (the backward scales them) and in the backward, block by block,
    for ``reduction="none"``. Double backward goes through the core, unfused (the N x V
    logits exist then). A probability ``target`` or class ``weight`` that requires grad takes
    the unfused core path too.

    Examples
    --------
    >>> import torch, softmaxce.torch as sct
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    >>> loss = sct.linear_cross_entropy(x, w, torch.tensor([0, 2]))
    >>> round(loss.item(), 5)
    0.81031
    >>> loss.backward()
    >>> x.grad
    tensor([[-0.0777,  0.2888],
            [-0.2342, -0.0317]])
    """
    check_operands(input, linear_weight, linear_bias)
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    t = target.unsqueeze(0) if unbatched and isinstance(target, torch.Tensor) else target
    stand_in = torch.empty((), dtype=x.dtype, device=x.device).expand(
        x.shape[0], linear_weight.shape[0]
    )
    call = check_call(
        stand_in, t, weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        inplace_backward=False, semantics=semantics, backend=backend,
    )  # fmt: skip
    chunk = _linear.chunk(chunk_size) or 0
    opts = call.opts
    if torch.is_grad_enabled() and (
        t.requires_grad or (weight is not None and weight.requires_grad)
    ):  # (gradients of a target or of class weights: autograd through the unfused core)
        logits = torch.nn.functional.linear(x, linear_weight, linear_bias)
        loss = _autograd.core_loss(logits, t, weight, opts)
    else:
        kernel = "core" if call.path == "core" else call.kernel
        if kernel == "core" and x.device.type == "cpu" and not torch.compiler.is_compiling():
            _autograd._check_host_values(stand_in, t, weight, opts)  # (the host path checks)
        loss = LinearCrossEntropy.apply(
            x, linear_weight, linear_bias, t, weight, opts, chunk, kernel
        )
    if unbatched and opts.reduction == "none":
        loss = loss.squeeze(0)
    return loss


class LinearCrossEntropyLoss(torch.nn.Module):
    r"""Module form of ``linear_cross_entropy``: ``loss_fn(input, linear_weight, target,
    linear_bias=None)``, the options fixed at construction (``weight`` is a buffer).

    Examples
    --------
    >>> import torch, softmaxce.torch as sct
    >>> loss_fn = sct.LinearCrossEntropyLoss(label_smoothing=0.1)
    >>> round(loss_fn(torch.zeros(2, 3), torch.zeros(4, 3), torch.tensor([1, 3])).item(), 6)
    1.386294
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        semantics: str = "softmaxce",
        chunk_size: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = v.integer(ignore_index, "ignore_index")
        self.reduction = v.reduction(reduction)
        self.label_smoothing = v.label_smoothing(label_smoothing)
        self.z_loss = v.z_loss(z_loss)
        self.softcap = v.softcap(softcap)
        self.semantics, self.backend = semantics, backend
        self.chunk_size = _linear.chunk(chunk_size)

    def forward(self, input, linear_weight, target, linear_bias=None) -> torch.Tensor:
        return linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
            ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
            semantics=self.semantics, chunk_size=self.chunk_size, backend=self.backend,
        )  # fmt: skip
