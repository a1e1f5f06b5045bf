"""``torch.nn.functional.cross_entropy`` on NumPy (PyTorch 2.x semantics, NaN included).

Port by changing the import::

    # loss = torch.nn.functional.cross_entropy(input, target, weight, ignore_index=-100)
    from softmaxce.compat.pytorch import cross_entropy
    loss = cross_entropy(input, target, weight, ignore_index=-100)

The class dimension is 1 (0 for an unbatched ``(C,)`` input); see ``docs/compat/pytorch.md``
for every option and the few documented differences.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _common

__all__ = ["cross_entropy", "cross_entropy_with_grad"]

_SEM = _common.TABLE["pytorch"]


def _torch_quirks(
    loss: Any, grad: np.ndarray | None, p: _common.Prepared, *, reduction: str, eps: float
) -> tuple[Any, np.ndarray | None]:
    """PyTorch's NaNs that are not a choice of the core's formula.

    1. ``0 * log(0)``: PyTorch multiplies ``log_softmax`` by the (smoothed) target and the
       weight, so a class with logit ``-inf`` and a zero coefficient gives ``0 * -inf = NaN``
       for that position (the core, like the maths, takes such a term as 0). For index
       targets the label's coefficient is ``(1 - label_smoothing) * w[t]``: PyTorch forms
       ``(1 - eps) * nll_loss``, so ``label_smoothing=1`` with the label's logit ``-inf`` is
       NaN too. The gradient is unaffected (it is finite in PyTorch too).
    2. ``"mean"`` with index targets and a zero weight sum ``W`` (and at least one position
       not ignored): PyTorch's backward divides by ``W`` and gives NaN on every position that
       is not ignored (the core gives 0); the loss is NaN in both.
    3. A position whose log-softmax is NaN (logits with NaN or ``+inf``, or all ``-inf``) gets
       a NaN gradient row in PyTorch even when it is ignored (``log_softmax``'s backward
       multiplies its NaN output by the zero incoming gradient); the core gives 0 there.
    """
    xm = np.moveaxis(p.x, p.axis, -1)
    if p.soft:
        q = np.moveaxis(p.target, p.axis, -1).astype(np.float64)
        coef = (1.0 - eps) * q + eps / xm.shape[-1]
        if p.weight is not None:
            coef = coef * p.weight
        kept = np.ones(xm.shape[:-1], dtype=bool)
        nan_pos = _common.zero_times_log_zero(xm, coef)
    else:
        t = p.target
        kept = t != p.ignore
        safe = np.where(kept, t, 0)
        # (1 - eps) * nll, nll = w[t] * log p_t; with smoothing also sum_c w_c log p_c.
        w_label = 1.0 if p.weight is None else p.weight[safe][..., None]
        at_label = np.take_along_axis(xm, safe[..., None], axis=-1)
        nan_pos = _common.zero_times_log_zero(at_label, (1.0 - eps) * w_label)
        if eps and p.weight is not None:
            nan_pos |= _common.zero_times_log_zero(xm, p.weight)
        nan_pos &= kept
    loss = _common.with_nan(loss, nan_pos, reduction)
    if grad is not None and reduction == "mean" and not p.soft:
        w_t = np.ones(kept.shape) if p.weight is None else p.weight[np.where(kept, p.target, 0)]
        if kept.any() and float(np.sum(w_t, where=kept)) == 0.0:
            gm = np.moveaxis(grad, p.axis, -1)  # a view: writes go to grad
            gm[kept] = np.nan
    if grad is not None:
        bad_rows = ~np.isfinite(np.max(xm, axis=-1))  # NaN, +inf, or every entry -inf
        if bad_rows.any():
            gm = np.moveaxis(grad, p.axis, -1)
            gm[bad_rows] = np.nan
    return loss, grad


def _call(input, target, weight, ignore_index, reduction, label_smoothing, *, want_grad, dloss):
    x = _common.logits_array(_SEM, input)
    if x.ndim == 0:
        msg = "input must have 1 dimension (C,) or more (N, C, ...), got a 0-d array"
        raise ValueError(msg)
    red = _common.choice(reduction, ("none", "mean", "sum"), "reduction")
    loss, grad, p = _common.run(
        _SEM,
        x,
        target,
        axis=0 if x.ndim == 1 else 1,
        want_grad=want_grad,
        dloss=dloss,
        reduction=red,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )
    if p.soft and p.ignore != -100:
        msg = (
            f"ignore_index={ignore_index} is not supported for a floating-point (probability) "
            "target; leave it at -100, as PyTorch requires"
        )
        raise ValueError(msg)
    eps = float(label_smoothing)
    loss, grad = _torch_quirks(loss, grad, p, reduction=red, eps=eps)
    if p.soft and p.target.dtype != p.x.dtype:
        # torch promotes the result to the common dtype of input and probability target.
        loss = np.asarray(loss).astype(np.result_type(p.x, p.target))[()]
    return loss, grad


def cross_entropy(
    input: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Any:
    r"""``torch.nn.functional.cross_entropy`` on NumPy arrays.

    ``input`` is ``(C,)``, ``(N, C)`` or ``(N, C, d1, ...)`` (class dimension 1); ``target``
    holds class indices (int64 or uint8, shape of ``input`` without the class dimension) or
    class probabilities (float, shape of ``input``). For index targets, per position

    .. math:: \ell_i = (1-\varepsilon)\, w_{t_i} (\mathrm{lse}_i - x_{i,t_i})
              + \frac{\varepsilon}{C} \sum_c w_c (\mathrm{lse}_i - x_{ic})

    (0 where ``t_i == ignore_index``); ``"mean"`` divides the sum by ``sum_i w[t_i]`` over the
    positions not ignored (NaN when that is 0, as in PyTorch). For probability targets
    ``q' = (1 - eps) q + eps / C``, ``l_i = sum_c w_c q'_ic (lse_i - x_ic)`` and ``"mean"``
    divides by the number of positions. Returns a NumPy scalar (``"mean"``, ``"sum"``) or an
    array (``"none"``).

    Examples
    --------
    >>> import numpy as np
    >>> from softmaxce.compat.pytorch import cross_entropy
    >>> x = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> round(float(cross_entropy(x, np.array([0, 1]))), 6)
    0.31854
    >>> float(cross_entropy(x, np.array([-100, -100])))  # everything ignored: NaN, as torch
    nan
    """
    loss, _ = _call(
        input, target, weight, ignore_index, reduction, label_smoothing, want_grad=False, dloss=None
    )
    return loss


def cross_entropy_with_grad(
    input: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    dloss: Any = None,
) -> tuple[Any, np.ndarray]:
    """:func:`cross_entropy` and its gradient with respect to ``input``.

    ``dloss`` is the upstream gradient of the result (None means ones): a scalar for
    ``"mean"``/``"sum"``, an array of the result's shape for ``"none"``. The gradient is what
    ``torch.autograd`` gives for ``loss.backward(dloss)``, NaNs included.

    Examples
    --------
    >>> import numpy as np
    >>> from softmaxce.compat.pytorch import cross_entropy_with_grad
    >>> loss, g = cross_entropy_with_grad(np.array([[1.0, 2.0, 3.0]]), np.array([2]))
    >>> g.round(4)
    array([[ 0.09  ,  0.2447, -0.3348]])
    """
    return _call(
        input, target, weight, ignore_index, reduction, label_smoothing, want_grad=True, dloss=dloss
    )
