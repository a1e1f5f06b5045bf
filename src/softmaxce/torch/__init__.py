r"""PyTorch front end: ``cross_entropy`` and ``CrossEntropyLoss``.

Drop-in for ``torch.nn.functional.cross_entropy`` (class dim 1, N-D and unbatched inputs, index
and probability targets, ``weight``, ``ignore_index``, ``reduction``, ``label_smoothing``) plus
``z_loss``, ``softcap``, ``inplace_backward``, ``semantics`` and ``backend``.

How it runs (``backend="auto"``):

* **CPU tensors**: a fused CPU kernel (``softmaxce._dispatch`` picks the numba kernel when it
  can run, else the NumPy core) on the tensor's own memory computes the loss *and* the
  gradient in one pass in the forward; the backward only scales that gradient by
  ``grad_output``. With ``inplace_backward=True`` the gradient is written into the input's
  storage. The kernels are ``torch.library`` custom ops (``_ops``), so ``torch.compile``
  traces them without a graph break.
* **CUDA tensors**, triton installed: the Triton kernel (``softmaxce._triton``, docs/gpu.md)
  gives the loss and the gradient in one fused pass, as the CPU kernel does.
* **Other devices**, and a probability target or class weights that require grad: the core
  (``softmaxce._core``, written once against the Array API) on the tensors themselves, on
  their device; its backward is the core's row gradient.
* **Double backward** (``create_graph=True``): the core's gradient, recorded by autograd.

Files: ``_checks`` (validation, once, into a ``LossOptions``), ``_ops`` (the custom ops),
``_autograd`` (the autograd Functions and the choice between them).

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

from typing import Any

import torch

from .. import _validate as v
from . import _autograd
from ._checks import check_backend, check_call, check_semantics
from ._linear import LinearCrossEntropyLoss, linear_cross_entropy

__all__ = ["CrossEntropyLoss", "LinearCrossEntropyLoss", "cross_entropy", "linear_cross_entropy"]


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
    backend: str = "auto",
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

    ``semantics`` names a row of ``softmaxce._semantics.TABLE`` (the same row as
    ``softmaxce.compat.pytorch`` for ``"torch"``):

    * ``"softmaxce"`` (default, the README's "The loss"): ``"mean"`` divides by
      ``W = sum_i v_i sum_c w_c y_ic``, so index targets and their one-hot float targets
      agree, also with class weights; ``W == 0`` (everything ignored, empty batch) gives loss
      0 and gradient 0, never NaN; a term with target mass 0 is 0 even where its logit is
      ``-inf``; class weights >= 0.
    * ``"torch"``: exactly ``F.cross_entropy``: index targets divide by ``sum_i v_i w[t_i]``,
      probability targets by the number of positions, ``W == 0`` gives NaN, ``0 * -inf`` is
      NaN, a position with a NaN or ``+inf`` logit gets a NaN gradient, and negative class
      weights are accepted.

    ``backend``: ``"auto"`` (the Triton kernel for CUDA tensors when triton is installed, a
    fused CPU kernel for CPU tensors, the core elsewhere), ``"triton"`` (CUDA tensors; CPU ones
    under ``TRITON_INTERPRET=1``), ``"numba"`` or ``"numpy"`` (that fused CPU kernel; CPU
    tensors only), ``"core"`` (the core on the tensors, any device). An explicit choice that
    cannot run raises. Gradients reach ``input`` and, through the core, a probability ``target``
    or a ``weight`` that requires grad; double backward (``create_graph=True``) works on both.

    ``inplace_backward=True`` (fused CPU path) writes the gradient into ``input``'s storage
    during the forward, so no ``N x C`` gradient is allocated: **afterwards ``input`` holds
    the gradient, not the logits**. It needs a contiguous input that is not a leaf requiring
    grad (nor a view of one), runs only when a gradient is required, and its backward runs
    only once (no ``retain_graph`` reuse, no double backward). On the core path it changes
    nothing.

    Examples
    --------
    >>> import torch, softmaxce.torch as sct
    >>> x = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    >>> sct.cross_entropy(x, torch.tensor([2, 0]), reduction="none")
    tensor([0.4076, 2.4076])
    >>> sct.cross_entropy(x, torch.tensor([2, 0]), reduction="none", backend="core")
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
    call = check_call(
        input, target, weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        inplace_backward=inplace_backward, semantics=semantics, backend=backend,
    )  # fmt: skip
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    t = target.unsqueeze(0) if unbatched else target
    loss = _autograd.loss(call, x, t, weight, inplace_backward)
    if unbatched and call.opts.reduction == "none":
        loss = loss.squeeze(0)
    return loss


class CrossEntropyLoss(torch.nn.Module):
    r"""Module form of ``cross_entropy``, with the arguments of ``nn.CrossEntropyLoss``.

    ``weight`` is a buffer (it moves with ``.to()``). The legacy ``size_average`` and
    ``reduce`` are rejected with a TypeError: use ``reduction``. ``z_loss``, ``softcap``,
    ``inplace_backward``, ``semantics`` and ``backend`` are as in ``cross_entropy``.

    Examples
    --------
    >>> import torch, softmaxce.torch as sct
    >>> loss_fn = sct.CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-4)
    >>> loss_fn
    CrossEntropyLoss(ignore_index=-100, reduction='mean', label_smoothing=0.1, z_loss=0.0001,
                     softcap=None, inplace_backward=False, semantics='softmaxce', backend='auto')
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
        backend: str = "auto",
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
        self.register_buffer("weight", weight)
        self.ignore_index = v.integer(ignore_index, "ignore_index")
        self.reduction = v.reduction(reduction)
        self.label_smoothing = v.label_smoothing(label_smoothing)
        self.z_loss = v.z_loss(z_loss)
        self.softcap = v.softcap(softcap)
        self.inplace_backward = v.flag(inplace_backward, "inplace_backward")
        self.semantics = check_semantics(semantics)
        self.backend = check_backend(backend)

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
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"softcap={self.softcap}, inplace_backward={self.inplace_backward}, "
            f"semantics={self.semantics!r}, backend={self.backend!r}"
        )
