"""``mygrad.nnet.losses.softmax_crossentropy`` on NumPy (mygrad 2.5 semantics).

Port by changing the import::

    # from mygrad.nnet.losses import softmax_crossentropy
    from softmaxce.compat.mygrad import softmax_crossentropy

Scores ``x`` of shape ``(N, C)``, integer labels ``y_true`` of shape ``(N,)``, the mean over
the ``N`` rows. See ``docs/compat/mygrad.md`` for the documented differences.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _validate as v
from . import _common

__all__ = ["softmax_crossentropy", "softmax_crossentropy_with_grad"]

_CHK = _common.CHECKS["mygrad"]  # the semantics: softmaxce._semantics.TABLE["mygrad"]


def _call(x: Any, y_true: Any, *, want_grad: bool, dloss: Any = None) -> tuple[Any, Any]:
    """mygrad's own checks, in its order (x is 2-D, y_true is integer, y_true is (N,)), then
    the core under mygrad's semantics."""
    arr = _common.logits_array(_CHK, x)
    if arr.ndim != 2:
        msg = f"x must be a 2-dimensional array of shape (N, C), got {arr.ndim}-dim {arr.shape}"
        raise ValueError(msg)
    y = v.as_array(y_true, "y_true")
    if y.dtype.kind not in "iu":
        msg = f"y_true must be an integer-type array of class indices, got dtype {y.dtype}"
        raise TypeError(msg)
    if y.shape != (arr.shape[0],):
        msg = f"y_true must be a shape-(N,) array with N = {arr.shape[0]}, got shape {y.shape}"
        raise ValueError(msg)
    return _common.call(_CHK, "mygrad", arr, y, axis=1, want_grad=want_grad, dloss=dloss)


def softmax_crossentropy(x: Any, y_true: Any, *, constant: bool | None = None) -> Any:
    r"""The mean softmax cross-entropy of scores ``x`` (N, C) for class indices ``y_true``.

    .. math:: L = \frac{1}{N} \sum_i \bigl(\mathrm{lse}(x_i) - x_{i, y_i}\bigr)

    ``constant`` is accepted as in mygrad; it changes no value (only whether
    ``softmax_crossentropy_with_grad`` returns a gradient). An empty batch gives NaN (0/0),
    as in mygrad. Returns a NumPy scalar of ``x``'s float dtype (integer scores: float64).

    Examples
    --------
    >>> import numpy as np
    >>> from softmaxce.compat.mygrad import softmax_crossentropy
    >>> x = np.array([[2.0, 2.0, 2.0], [0.0, 0.0, 1e6]])
    >>> round(float(softmax_crossentropy(x, np.array([0, 2]))), 8)
    0.54930614
    """
    return _call(x, y_true, want_grad=False)[0]


def softmax_crossentropy_with_grad(
    x: Any, y_true: Any, *, constant: bool | None = None, dloss: Any = None
) -> tuple[Any, np.ndarray | None]:
    """``softmax_crossentropy`` and its gradient ``dloss * (softmax(x) - onehot) / N``.

    ``dloss`` is the upstream gradient of the (scalar) loss, None meaning 1. With
    ``constant=True`` the gradient is None, as mygrad leaves ``x.grad`` unset.

    Examples
    --------
    >>> import numpy as np
    >>> from softmaxce.compat.mygrad import softmax_crossentropy_with_grad
    >>> loss, g = softmax_crossentropy_with_grad(np.array([[0.0, 0.0]]), np.array([1]))
    >>> g
    array([[ 0.5, -0.5]])
    """
    return _call(x, y_true, want_grad=not constant, dloss=dloss)
