"""MXNet 1.x ``SoftmaxOutput`` on NumPy: probabilities forward, MXNet's gradient backward.

Port by changing the call::

    # out = mx.nd.SoftmaxOutput(data, label, normalization="valid", use_ignore=True)
    from softmaxce.compat.mxnet import SoftmaxOutput, SoftmaxOutput_with_grad
    out = SoftmaxOutput(data, label, normalization="valid", use_ignore=True)
    out, data_grad = SoftmaxOutput_with_grad(data, label, normalization="valid", use_ignore=True)

``SoftmaxOutput`` is a loss layer without a loss value: its forward is the softmax, its backward
the gradient of the cross-entropy (``grad_scale / norm * (p - q)``), whatever gradient arrives
from above (unless ``out_grad=True``). See ``docs/compat/mxnet.md`` for the three shape modes,
the normalisations and the documented differences.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _validate as v
from .._core.softmax import softmax
from . import _common

__all__ = ["SoftmaxOutput", "SoftmaxOutput_with_grad"]

_CHK = _common.CHECKS["mxnet"]  # the semantics: softmaxce._semantics.TABLE["mxnet"]
NORMALIZATIONS = ("null", "batch", "valid")


def _ignored(label: np.ndarray, ignore: float) -> np.ndarray:
    """Where a label equals ``ignore_label``: MXNet compares ``static_cast<int>`` of both, i.e.
    their truncations toward zero. Compared in the label's dtype, never cast to an integer
    type, so that a label or ignore_label beyond the integers (1e30) cannot wrap around."""
    if label.dtype.kind in "iu":
        return label == math.trunc(ignore)
    with np.errstate(over="ignore"):  # float16 cannot hold 1e30: inf, which no label equals
        return np.trunc(label) == np.trunc(label.dtype.type(ignore))


def _class_indices(
    row_labels: np.ndarray, ignored: np.ndarray, n_classes: int, label: np.ndarray, also: str
) -> np.ndarray:
    """MXNet's class index of every row, as int64: the label truncated toward zero, -1 where
    ``ignored``. Any other label must be in ``[0, C)`` (MXNet does not check; softmaxce
    raises, the README's error rule).
    ``row_labels`` is a prefix of ``label.reshape(-1)``, so positions are reported in ``label``.
    """
    tr = np.trunc(row_labels) if row_labels.dtype.kind == "f" else row_labels
    bad = ~(ignored | ((tr >= 0) & (tr < n_classes)))  # NaN fails both comparisons
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        pos = tuple(int(i) for i in np.unravel_index(k, label.shape))
        msg = (
            f"label must hold class indices in [0, {n_classes}) (truncated toward zero){also}; "
            f"got {row_labels[k]} at position {pos}"
        )
        raise ValueError(msg)
    return np.where(ignored, -1, tr).astype(np.int64)


def _layout(shape: tuple[int, ...], multi_output: bool, preserve_shape: bool):
    """MXNet's view of data as (rows, classes): ``(to_rows, from_rows)``.

    Default: ``data`` flattened to ``(d1, size / d1)``; ``preserve_shape``: the last axis;
    ``multi_output`` (wins over ``preserve_shape``): axis 1 of ``(n, k, rest)``.
    """
    if multi_output:
        n_classes, where = shape[1], "along axis 1 (multi_output=True)"
    elif preserve_shape:
        n_classes, where = shape[-1], "along the last axis (preserve_shape=True)"
    else:
        n_classes, where = math.prod(shape[1:]), "in shape[1:] (data is flattened to (d1, -1))"
    if n_classes == 0:
        msg = f"data must have at least one class {where}, got shape {shape}"
        raise ValueError(msg)
    if multi_output:
        n, k = shape[0], shape[1]
        rest = math.prod(shape[2:])

        def to_rows(a):
            return np.moveaxis(a.reshape(n, k, rest), 1, -1).reshape(n * rest, k)

        def from_rows(a):
            return np.moveaxis(a.reshape(n, rest, k), -1, 1).reshape(shape)

        return to_rows, from_rows
    cols = shape[-1] if preserve_shape else math.prod(shape[1:])
    return (lambda a: a.reshape(-1, cols)), (lambda a: a.reshape(shape))


def _row_labels(
    shape: tuple[int, ...], label: np.ndarray, multi_output: bool, preserve_shape: bool
) -> tuple[np.ndarray, int]:
    """The label entry of every row (MXNet's shape rules), and the spatial size of
    ``multi_output`` (that "null" and "batch" also divide by; 1 otherwise)."""
    if multi_output:
        n, rest = shape[0], math.prod(shape[2:])
        allowed = [(n, rest), (n, *shape[2:]), (n, 1, *shape[2:])]
        if label.shape not in allowed:
            msg = (
                f"label: with multi_output=True expected shape {allowed[0]} or {allowed[1]} "
                f"for data of shape {shape}, got {label.shape}"
            )
            raise ValueError(msg)
        return label.reshape(n * rest), rest
    if label.shape != shape[:-1]:
        msg = f"label: expected shape {shape[:-1]} for data of shape {shape}, got {label.shape}"
        raise ValueError(msg)
    if preserve_shape:
        return label.reshape(-1), 1
    # Default mode: the backward reads the first d1 entries of the flattened label.
    return label.reshape(-1)[: shape[0]], 1


def _call(
    data,
    label,
    *,
    grad_scale,
    ignore_label,
    multi_output,
    use_ignore,
    preserve_shape,
    normalization,
    out_grad,
    smooth_alpha,
    want_grad,
    ograd,
):
    x, lab = _arrays(data, label)
    norm = v.choice(normalization, NORMALIZATIONS, "normalization")
    scale = v.real_scalar(grad_scale, "grad_scale")
    ignore = v.real_scalar(ignore_label, "ignore_label")
    alpha = v.real_scalar(smooth_alpha, "smooth_alpha")
    if not (math.isfinite(scale) and math.isfinite(ignore)):
        msg = f"grad_scale and ignore_label must be finite, got {scale!r} and {ignore!r}"
        raise ValueError(msg)
    prob = lab.shape == x.shape
    to_rows, from_rows = _layout(x.shape, bool(multi_output), bool(preserve_shape))
    if not prob:
        row_labels, spatial = _row_labels(x.shape, lab, bool(multi_output), bool(preserve_shape))
    rows = to_rows(x)
    with np.errstate(all="ignore"):  # the core's softmax, whichever kernels are loaded
        out = from_rows(softmax(rows, 1, None))
    if not want_grad:
        return out, None

    head = None
    if out_grad and ograd is not None:
        head = v.float_array(ograd, "ograd")
        v.same_shape(x, head, "data", "ograd")
    if prob:
        # Probability labels: grad_scale * (p - label) (the row's unit_mass), nothing else (no
        # normalisation, ignore or smoothing), as MXNet's backward.
        _, grad = _common.run(
            "mxnet", rows, to_rows(lab), axis=1, want_grad=True, dloss=scale, reduction="sum"
        )
        return out, _head(from_rows(grad), head)

    n_classes = rows.shape[1]
    ignored = _ignored(row_labels, ignore) if use_ignore else np.zeros(row_labels.shape, bool)
    also = f" or ignore_label={ignore!r}" if use_ignore else ""
    t_rows = _class_indices(row_labels, ignored, n_classes, lab, also)
    denom = _denominator(norm, lab, ignore, spatial, bool(multi_output))
    eps = 0.0 if multi_output else _smoothing(alpha, n_classes)  # (none with multi_output)
    _, g = _common.run(
        "mxnet",
        rows,
        t_rows,
        axis=1,
        want_grad=True,
        # A "batch" or "null" count of 0 means that data has no element (an empty batch, or
        # multi_output with spatial size 0): MXNet's float division by 0 then scales an empty
        # gradient, which stays empty; so does ours, whatever the scale.
        dloss=scale / denom if denom else 0.0,
        reduction="sum",
        ignore=-1 if use_ignore else _common.NO_IGNORE,
        label_smoothing=eps,
    )
    return out, _head(from_rows(g), head)


def _arrays(data: Any, label: Any) -> tuple[np.ndarray, np.ndarray]:
    """``data`` and ``label`` as arrays, with MXNet's rules on their shapes and dtypes."""
    x = _common.logits_array(_CHK, data)
    if x.ndim < 2:
        msg = f"data must have 2 or more dimensions (batch, ...), got shape {x.shape}"
        raise ValueError(msg)
    lab = v.as_array(label, "label")
    if lab.dtype.kind == "f" and lab.dtype != x.dtype:
        msg = (
            f"label must have data's dtype {x.dtype} (MXNet infers one type for both), "
            f"got {lab.dtype}"
        )
        raise TypeError(msg)
    if lab.dtype.kind not in "iuf":
        msg = f"label must be a real array (class indices or probabilities), got {lab.dtype}"
        raise TypeError(msg)
    return x, lab


def _denominator(
    norm: str, lab: np.ndarray, ignore: float, spatial: int, multi_output: bool
) -> int:
    """What MXNet divides the gradient by: "valid" counts every label entry that differs
    from ignore_label (also with use_ignore=False), at least 1; "batch" is label.size(0) of
    MXNet's flattened label; "null" the spatial size."""
    if norm == "valid":
        return max(int(np.count_nonzero(~_ignored(lab, ignore))), 1)
    if norm == "batch":
        return lab.shape[0] * spatial if multi_output else lab.size
    return spatial


def _smoothing(alpha: float, n_classes: int) -> float:
    """The core's ``label_smoothing`` for MXNet's ``smooth_alpha``: MXNet gives the target
    1 - alpha and the others alpha / (C - 1); the core (1 - eps) + eps / C and eps / C. Equal
    for eps = alpha * C / (C - 1)."""
    if not alpha:
        return 0.0
    if n_classes == 1:
        msg = (
            f"smooth_alpha={alpha!r} needs at least 2 classes (MXNet spreads it as "
            f"smooth_alpha/(C-1) over the other classes), got C=1"
        )
        raise ValueError(msg)
    if not 0.0 <= alpha <= (n_classes - 1) / n_classes:
        msg = (
            f"smooth_alpha must be in [0, (C-1)/C] = [0, {(n_classes - 1) / n_classes:g}] "
            f"for C={n_classes} classes (the target class keeps 1 - smooth_alpha, every "
            f"other class smooth_alpha/(C-1)), got {alpha!r}"
        )
        raise ValueError(msg)
    return alpha * n_classes / (n_classes - 1)


def _head(grad: np.ndarray, head: np.ndarray | None) -> np.ndarray:
    """With ``out_grad=True``: the gradient times the head gradient ``ograd``, element-wise
    (MXNet's documented intent)."""
    return grad if head is None else (grad * head).astype(grad.dtype)


def SoftmaxOutput(
    data: Any,
    label: Any,
    *,
    grad_scale: float = 1.0,
    ignore_label: float = -1.0,
    multi_output: bool = False,
    use_ignore: bool = False,
    preserve_shape: bool = False,
    normalization: str = "null",
    out_grad: bool = False,
    smooth_alpha: float = 0.0,
) -> np.ndarray:
    r"""MXNet's ``SoftmaxOutput`` forward: the softmax probabilities, of ``data``'s shape.

    The softmax runs over the rows of MXNet's view of ``data``: by default ``data`` flattened
    to ``(d1, size / d1)``; with ``preserve_shape=True`` over the last axis; with
    ``multi_output=True`` over axis 1 of ``data`` viewed as ``(n, k, rest)``
    (``multi_output`` wins when both are set). The label and every other option only affect
    the gradient (see ``SoftmaxOutput_with_grad``).

    Examples
    --------
    >>> import numpy as np
    >>> from softmaxce.compat.mxnet import SoftmaxOutput
    >>> data = np.array([[1, 2, 3, 4], [2, 2, 2, 2]], np.float32)
    >>> SoftmaxOutput(data, np.array([1, 0], np.float32))
    array([[0.0320586 , 0.08714432, 0.2368828 , 0.6439143 ],
           [0.25      , 0.25      , 0.25      , 0.25      ]], dtype=float32)
    """
    out, _ = _call(
        data,
        label,
        grad_scale=grad_scale,
        ignore_label=ignore_label,
        multi_output=multi_output,
        use_ignore=use_ignore,
        preserve_shape=preserve_shape,
        normalization=normalization,
        out_grad=out_grad,
        smooth_alpha=smooth_alpha,
        want_grad=False,
        ograd=None,
    )
    return out


def SoftmaxOutput_with_grad(
    data: Any,
    label: Any,
    *,
    grad_scale: float = 1.0,
    ignore_label: float = -1.0,
    multi_output: bool = False,
    use_ignore: bool = False,
    preserve_shape: bool = False,
    normalization: str = "null",
    out_grad: bool = False,
    smooth_alpha: float = 0.0,
    ograd: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""``SoftmaxOutput``'s output and MXNet's gradient with respect to ``data``.

    Class-index labels (any real dtype; MXNet truncates them toward zero):

    .. math:: \mathrm{grad} = \frac{\mathrm{grad\_scale}}{\mathrm{norm}} (p - q)

    per row, with ``q`` the one-hot label, smoothed to ``1 - smooth_alpha`` on the label and
    ``smooth_alpha / (C - 1)`` elsewhere (not with ``multi_output``), and rows whose label is
    ``ignore_label`` set to 0 when ``use_ignore``. ``norm`` is 1 (``"null"``), the number of
    label entries (``"batch"``) or of label entries different from ``ignore_label`` (at least
    1, ``"valid"``); with ``multi_output``, ``"null"`` and ``"batch"`` also divide by the
    spatial size. Probability labels (``label.shape == data.shape``) give
    ``grad_scale * (p - label)``. ``ograd`` is the head gradient: with ``out_grad=True`` the
    gradient is multiplied by it element-wise (as documented by MXNet; MXNet 1.9.1 multiplies
    by its own output instead); with ``out_grad=False`` it is ignored, as in MXNet.

    Examples
    --------
    >>> import numpy as np
    >>> from softmaxce.compat.mxnet import SoftmaxOutput_with_grad
    >>> data = np.array([[1, 2, 3, 4], [2, 2, 2, 2], [3, 3, 3, 3], [4, 4, 4, 4]], np.float32)
    >>> label = np.array([1, 0, 2, 3], np.float32)
    >>> out, grad = SoftmaxOutput_with_grad(data, label, multi_output=True, use_ignore=True,
    ...                                     ignore_label=1)
    >>> grad
    array([[ 0.  ,  0.  ,  0.  ,  0.  ],
           [-0.75,  0.25,  0.25,  0.25],
           [ 0.25,  0.25, -0.75,  0.25],
           [ 0.25,  0.25,  0.25, -0.75]], dtype=float32)
    """
    return _call(
        data,
        label,
        grad_scale=grad_scale,
        ignore_label=ignore_label,
        multi_output=multi_output,
        use_ignore=use_ignore,
        preserve_shape=preserve_shape,
        normalization=normalization,
        out_grad=out_grad,
        smooth_alpha=smooth_alpha,
        want_grad=True,
        ograd=ograd,
    )
