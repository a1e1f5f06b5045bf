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

from .. import _validate as v
from . import _common

__all__ = ["cross_entropy", "cross_entropy_with_grad"]

_CHK = _common.CHECKS["torch"]  # the semantics: softmaxce._semantics.TABLE["torch"]


def _call(input, target, weight, ignore_index, reduction, label_smoothing, *, want_grad, dloss):
    x = _common.logits_array(_CHK, input)
    if x.ndim == 0:
        msg = "input must have 1 dimension (C,) or more (N, C, ...), got a 0-d array"
        raise ValueError(msg)
    red = v.reduction(reduction)
    eps = v.label_smoothing(label_smoothing)
    ignore = v.ignore_index(ignore_index)
    t = v.as_array(target, "target")
    if t.dtype.kind == "f" and ignore != -100:
        msg = (
            f"ignore_index={ignore_index} is not supported for a floating-point (probability) "
            "target; leave it at -100, as PyTorch requires"
        )
        raise ValueError(msg)
    loss, grad = _common.call(
        _CHK,
        "torch",
        x,
        t,
        axis=0 if x.ndim == 1 else 1,
        weight=weight,
        ignore=ignore,
        want_grad=want_grad,
        dloss=dloss,
        reduction=red,
        label_smoothing=eps,
    )
    if t.dtype.kind == "f" and t.dtype != x.dtype:
        # torch promotes the result to the common dtype of input and probability target.
        loss = np.asarray(loss).astype(np.result_type(x, t))[()]
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
    """``cross_entropy`` and its gradient with respect to ``input``.

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
