"""optax's ``softmax_cross_entropy`` and ``softmax_cross_entropy_with_integer_labels`` on NumPy.

Port by changing the import::

    # import optax; losses = optax.softmax_cross_entropy(logits, labels)
    from softmaxce.compat import optax
    losses = optax.softmax_cross_entropy(logits, labels)

Both return per-example losses (no reduction). ``axis`` is the class axis, an int or a tuple of
axes (flattened, in the given order, into one class axis); ``where`` masks classes out of the
softmax. See ``docs/compat/optax.md`` for every option and the documented differences.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _validate as v
from . import _common

__all__ = [
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_grad",
    "softmax_cross_entropy_with_integer_labels",
    "softmax_cross_entropy_with_integer_labels_with_grad",
]

_CHK = _common.CHECKS["optax"]  # the semantics: softmaxce._semantics.TABLE["optax"]


def _axes(axis: Any, shape: tuple[int, ...], *, allow_none: bool) -> tuple[int, ...]:
    """optax's ``axis``: an int, a tuple of ints (or, for the float version, None = all);
    the class axes of the logits' ``shape`` must hold at least one class."""
    ndim = len(shape)
    if axis is None and allow_none:
        axes = tuple(range(ndim))
    elif isinstance(axis, tuple | list):
        axes = tuple(v.class_axis(a, ndim, array="logits") for a in axis)
        if not axes or len(set(axes)) != len(axes):
            msg = f"axis must be a non-empty tuple of distinct axes, got {tuple(axis)!r}"
            raise ValueError(msg)
    elif isinstance(axis, bool | np.bool_) or not isinstance(axis, int | np.integer):
        what = "int or tuple[int, ...]" + (" or None" if allow_none else "")
        msg = f"axis must be of type {what}, got {type(axis).__name__} {axis!r}"
        raise ValueError(msg)
    else:
        axes = (v.class_axis(axis, ndim, array="logits"),)
    if not all(shape[a] for a in axes):
        msg = (
            f"logits must have at least one class along the class axis {axis!r}, got shape {shape}"
        )
        raise ValueError(msg)
    return axes


class _Layout:
    """The class axes moved last (in the given order) and flattened into one axis."""

    def __init__(self, shape: tuple[int, ...], axes: tuple[int, ...]) -> None:
        self.rest = [i for i in range(len(shape)) if i not in axes]
        self.perm = self.rest + list(axes)
        self.moved_shape = tuple(shape[i] for i in self.perm)
        self.batch_shape = self.moved_shape[: len(self.rest)]

    def to_rows(self, a: np.ndarray) -> np.ndarray:
        return np.transpose(a, self.perm).reshape((*self.batch_shape, -1))

    def from_rows(self, a: np.ndarray) -> np.ndarray:
        return np.transpose(a.reshape(self.moved_shape), np.argsort(self.perm))


def _logits(logits: Any) -> np.ndarray:
    x = _common.logits_array(_CHK, logits)
    if x.ndim == 0:
        msg = "logits must have at least one dimension (the classes), got a 0-d array"
        raise ValueError(msg)
    return x


def _where(where: Any, shape: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray | None:
    """``where`` of the logits' shape, or of the batch shape (class axes inserted), as optax."""
    if where is None:
        return None
    mask = v.as_array(where, "where")
    if mask.ndim != len(shape):
        mask = np.expand_dims(mask, tuple(sorted(axes)))
    return v.where_mask(mask, shape)


def _sce(logits, labels, axis, where, *, want_grad, dloss):
    x = _logits(logits)
    axes = _axes(axis, x.shape, allow_none=True)
    lay = _Layout(x.shape, axes)
    q = v.as_array(labels, "labels")
    if q.dtype.kind not in "biuf":
        msg = f"labels must be a real array (class probabilities), got dtype {q.dtype}"
        raise TypeError(msg)
    try:
        q = np.broadcast_to(q, x.shape)
    except ValueError:
        msg = f"labels of shape {q.shape} do not broadcast to the logits' shape {x.shape}"
        raise TypeError(msg) from None
    if q.dtype.kind != "f":
        q = q.astype(x.dtype)  # optax multiplies integer (one-hot) labels as numbers
    mask = _where(where, x.shape, axes)
    x2, q2 = lay.to_rows(x), lay.to_rows(q)
    m2 = None if mask is None else lay.to_rows(mask)
    if m2 is not None:
        # optax sums -labels * log_softmax only where ``where`` is True: masked labels are zero.
        q2 = np.where(m2, q2, 0.0).astype(q2.dtype)
    return _run(x2, q2, m2, lay, want_grad, dloss)


def _int(logits, labels, axis, where, *, want_grad, dloss):
    x = _logits(logits)
    axes = _axes(axis, x.shape, allow_none=False)
    lay = _Layout(x.shape, axes)
    t = v.as_array(labels, "labels")
    if t.dtype.kind not in "iu":
        msg = f"labels must be an integer array (class indices), got dtype {t.dtype}"
        raise TypeError(msg)
    mask = _where(where, x.shape, axes)
    x2 = lay.to_rows(x)
    m2 = None if mask is None else lay.to_rows(mask)
    # The labels are checked against the flattened class axis (shape and range); a label at
    # a masked class keeps its logit (the row's label_keeps_logit).
    t = _common.target_array(_CHK, t, x2, x2.ndim - 1)
    return _run(x2, t, m2, lay, want_grad, dloss)


def _run(x2, t2, m2, lay, want_grad, dloss):
    """The core on the rows (class axes last and flattened): per-example losses, and the
    gradient in the logits' layout."""
    loss, grad = _common.run(
        "optax",
        x2,
        t2,
        axis=x2.ndim - 1,
        want_grad=want_grad,
        dloss=dloss,
        reduction="none",
        where=m2,
    )
    return loss, None if grad is None else lay.from_rows(grad)


def softmax_cross_entropy(logits: Any, labels: Any, axis: Any = -1, where: Any = None) -> Any:
    r"""Per-example softmax cross-entropy against class probabilities, as optax.

    .. math:: \ell = -\sum_{c \in \text{axis}} y_c \log\operatorname{softmax}(x)_c

    ``axis``: an int, a tuple of ints, or None (all axes). ``where`` (bool, broadcastable to
    ``logits``) masks classes: they leave the softmax and their labels count as 0; a fully
    masked example gives 0. As in optax, ``0 * log(0)`` is NaN: a zero label at a ``-inf``
    logit makes the example's loss NaN. Returns an array of the logits' shape without the
    class axes (a 0-d array when every axis is a class axis).

    Examples
    --------
    >>> import numpy as np
    >>> from softmaxce.compat import optax
    >>> optax.softmax_cross_entropy(np.array([[0.0, 0.0], [1.0, 3.0]]),
    ...                             np.array([[0.5, 0.5], [0.0, 1.0]])).round(6)
    array([0.693147, 0.126928])
    """
    loss, _ = _sce(logits, labels, axis, where, want_grad=False, dloss=None)
    return loss


def softmax_cross_entropy_with_grad(
    logits: Any, labels: Any, axis: Any = -1, where: Any = None, *, dloss: Any = None
) -> tuple[Any, np.ndarray]:
    """``softmax_cross_entropy`` and its gradient with respect to ``logits``.

    ``dloss`` (shape of the result; None means ones) is the upstream gradient: the result is
    ``jax.vjp``'s, ``(sum_c y_c) p - y`` per example times ``dloss``, 0 at masked classes.
    """
    return _sce(logits, labels, axis, where, want_grad=True, dloss=dloss)


def softmax_cross_entropy_with_integer_labels(
    logits: Any, labels: Any, axis: Any = -1, where: Any = None
) -> Any:
    r"""Per-example softmax cross-entropy against integer class indices, as optax.

    .. math:: \ell = \operatorname{logsumexp}_{c \in \text{where}}(x_c) - x_{\text{label}}

    ``axis``: an int or a tuple of ints (the class axes, flattened in the given order, so a
    label indexes the flattened classes). ``labels`` has the logits' shape without the class
    axes. A fully masked example gives 0; a label at a masked class keeps its logit (optax
    does not mask the label), so its loss is ``logsumexp`` over the allowed classes minus that
    logit.

    Examples
    --------
    >>> import numpy as np
    >>> from softmaxce.compat import optax
    >>> optax.softmax_cross_entropy_with_integer_labels(
    ...     np.array([[0.0, 0.0], [1.0, 3.0]]), np.array([0, 1])).round(6)
    array([0.693147, 0.126928])
    """
    loss, _ = _int(logits, labels, axis, where, want_grad=False, dloss=None)
    return loss


def softmax_cross_entropy_with_integer_labels_with_grad(
    logits: Any, labels: Any, axis: Any = -1, where: Any = None, *, dloss: Any = None
) -> tuple[Any, np.ndarray]:
    """``softmax_cross_entropy_with_integer_labels`` and its gradient w.r.t. ``logits``.

    ``dloss`` (shape of the result; None means ones) is the upstream gradient; the gradient
    is ``(softmax - onehot) * dloss`` per example, 0 at masked classes other than the label.
    """
    return _int(logits, labels, axis, where, want_grad=True, dloss=dloss)
