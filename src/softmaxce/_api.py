"""The public NumPy functions: validate once, reshape to rows, call the core, reduce."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core, _dispatch
from . import _validate as v

__all__ = [
    "cross_entropy",
    "cross_entropy_vjp",
    "gradcheck",
    "log_softmax",
    "log_softmax_vjp",
    "logsumexp",
    "numerical_gradient",
    "softmax",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_grad",
    "softmax_jacobian",
    "softmax_vjp",
]


# --------------------------------------------------------------------------------------------
# Softmax and its relatives
# --------------------------------------------------------------------------------------------


def _unary(x: Any, axis: Any, where: Any, name: str = "x"):
    arr = v.float_array(x, name)
    ax = v.class_axis(axis, arr.ndim, array=name)
    v.nonempty_classes(arr, ax, name)
    return arr, ax, v.where_mask(where, arr.shape)


def softmax(x: Any, /, *, axis: int = -1, where: Any = None) -> np.ndarray:
    r"""Softmax along ``axis``.

    .. math:: \operatorname{softmax}(x)_c = \frac{e^{x_c - m}}{\sum_k e^{x_k - m}},
              \quad m = \max_k x_k

    Entries where ``where`` is False are excluded: their softmax is 0, and a row with no
    allowed entry is all 0. Computed in at least float32; the result has the input's float
    dtype (integers give float64).

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> softmaxce.softmax(np.array([1.0, 2.0, 3.0])).round(4)
    array([0.09  , 0.2447, 0.6652])
    >>> softmaxce.softmax(np.array([0.0, 0.0, 1e30]))
    array([0., 0., 1.])
    >>> softmaxce.softmax(np.array([1.0, 2.0, 3.0]), where=np.array([True, True, False]))
    array([0.26894142, 0.73105858, 0.        ])

    References
    ----------
    Blanchard, Higham & Higham, "Accurately computing the log-sum-exp and softmax functions",
    IMA J. Numer. Anal. 41 (2021).
    """
    arr, ax, mask = _unary(x, axis, where)
    kernels = _dispatch.rows_kernels(arr, ax, mask)
    if kernels is not None:
        x2 = arr.reshape(-1, arr.shape[-1])
        return kernels.softmax_rows(x2, np.empty_like(x2)).reshape(arr.shape)
    return _core.softmax(arr, ax, mask)


def log_softmax(x: Any, /, *, axis: int = -1, where: Any = None) -> np.ndarray:
    r"""Log of the softmax along ``axis``, computed without forming the softmax.

    .. math:: \log\operatorname{softmax}(x)_c = (x_c - m) - \log\sum_k e^{x_k - m}

    Masked entries (``where`` False) give ``-inf``.

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> softmaxce.log_softmax(np.array([0.0, 0.0, 1e6]))
    array([-1000000., -1000000.,        0.])
    """
    arr, ax, mask = _unary(x, axis, where)
    kernels = _dispatch.rows_kernels(arr, ax, mask)
    if kernels is not None:
        x2 = arr.reshape(-1, arr.shape[-1])
        return kernels.log_softmax_rows(x2, np.empty_like(x2)).reshape(arr.shape)
    return _core.log_softmax(arr, ax, mask)


def logsumexp(
    x: Any, /, *, axis: int = -1, keepdims: bool = False, where: Any = None
) -> np.ndarray:
    r"""``log(sum(exp(x)))`` along ``axis``, shifted by the maximum so that it never overflows.

    .. math:: \operatorname{lse}(x) = m + \log\sum_k e^{x_k - m}

    A row with no allowed entry (or all ``-inf``) gives ``-inf``; ``+inf`` gives NaN.

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> float(softmaxce.logsumexp(np.array([1e30, 1e30])))
    1e+30
    >>> float(softmaxce.logsumexp(np.array([0.0, np.log(3.0)])).round(12))
    1.386294361120
    """
    arr, ax, mask = _unary(x, axis, where)
    kernels = _dispatch.rows_kernels(arr, ax, mask)
    if kernels is not None:
        out = kernels.logsumexp_rows(arr.reshape(-1, arr.shape[-1])).reshape(arr.shape[:-1])
        return out[..., None] if keepdims else out
    return _core.logsumexp(arr, ax, bool(keepdims), mask)


def _vjp_inputs(a: Any, dy: Any, axis: Any, name_a: str):
    arr = v.float_array(a, name_a)
    d = v.float_array(dy, "dy")
    v.same_shape(arr, d, name_a, "dy")
    ax = v.class_axis(axis, arr.ndim, array=name_a)
    v.nonempty_classes(arr, ax, name_a)
    return arr, d, ax


def softmax_vjp(y: Any, dy: Any, /, *, axis: int = -1) -> np.ndarray:
    r"""Vector-Jacobian product of the softmax: ``dx = y * (dy - sum(y * dy))``.

    ``y`` is the softmax output (not the logits) and ``dy`` the gradient with respect to it.
    This is what a hand-made framework's softmax layer needs in its backward pass; the Jacobian
    ``diag(y) - y y^T`` is never formed.

    .. math:: \frac{\partial L}{\partial x_j} = y_j \Bigl(\frac{\partial L}{\partial y_j}
              - \sum_i y_i \frac{\partial L}{\partial y_i}\Bigr)

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> y = softmaxce.softmax(np.array([1.0, 2.0, 3.0]))
    >>> softmaxce.softmax_vjp(y, np.array([1.0, 1.0, 1.0]))  # a constant shift has no effect
    array([0., 0., 0.])
    """
    arr, d, ax = _vjp_inputs(y, dy, axis, "y")
    return _core.softmax_vjp(arr, d, ax).astype(np.result_type(arr, d), copy=False)


def log_softmax_vjp(logp: Any, dy: Any, /, *, axis: int = -1) -> np.ndarray:
    r"""Vector-Jacobian product of the log-softmax: ``dx = dy - exp(logp) * sum(dy)``.

    .. math:: \frac{\partial L}{\partial x_j} = \frac{\partial L}{\partial \ell_j}
              - p_j \sum_i \frac{\partial L}{\partial \ell_i}

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> logp = softmaxce.log_softmax(np.array([0.0, 0.0]))
    >>> softmaxce.log_softmax_vjp(logp, np.array([-1.0, 0.0]))  # gradient of -logp[0]
    array([-0.5,  0.5])
    """
    arr, d, ax = _vjp_inputs(logp, dy, axis, "logp")
    return _core.log_softmax_vjp(arr, d, ax).astype(np.result_type(arr, d), copy=False)


def softmax_jacobian(y: Any, /, *, axis: int = -1) -> np.ndarray:
    r"""The softmax Jacobian ``diag(y) - y y^T`` for every row, from the softmax output ``y``.

    The result has shape ``y.shape + (C,)``: entry ``[..., i, ..., j]`` (``i`` at ``axis``,
    ``j`` the new last axis) is ``d y_i / d x_j = y_i (delta_ij - y_j)``. Prefer
    :func:`softmax_vjp`, which costs O(C) per row instead of O(C^2).

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> softmaxce.softmax_jacobian(np.array([0.5, 0.5]))
    array([[ 0.25, -0.25],
           [-0.25,  0.25]])
    """
    arr = v.float_array(y, "y")
    ax = v.class_axis(axis, arr.ndim, array="y")
    v.nonempty_classes(arr, ax, "y")
    return _core.softmax_jacobian(arr, ax).astype(arr.dtype, copy=False)


# --------------------------------------------------------------------------------------------
# Losses: the shared preparation of rows
# --------------------------------------------------------------------------------------------


# How "mean" normalises, for the compat modes and front ends (SPEC §1 is "mass" / "zero"):
#   mean_by: "mass"      W = sum_i v_i sum_c w_c y_ic (the target before smoothing)
#            "valid"     W = number of positions with v_i = 1 (class weights not counted)
#            "positions" W = number of positions (ignored ones included)
#            "batch"     W = size of the input's first axis
#   empty:   what W == 0 gives: "zero" (loss 0, gradient 0), "nan" (loss NaN, gradient 0, as
#            PyTorch), "one" (W is clipped to at least 1, as Chainer and MXNet)
MEAN_BY = ("mass", "valid", "positions", "batch")
EMPTY = ("zero", "nan", "one")


@dataclass
class _Rows:
    """A validated problem, flattened to (N, C) rows with the class axis last."""

    x: np.ndarray  # the validated float input, original layout
    axis: int
    x2: np.ndarray  # (N, C) rows (a view of x when its class axis is last and contiguous)
    target: np.ndarray  # (N,) int64 or (N, C) float
    where: np.ndarray | None  # (N, C) bool
    weight: np.ndarray | None
    ignore_index: int
    reduction: str
    batch_shape: tuple[int, ...]
    mean_by: str = "mass"
    empty: str = "zero"

    def unit_weights(self, z_loss: float) -> float:
        """Scale the class weights by a power of two ``2**-e`` that puts their largest magnitude
        in [1, 2), where the weights' scale cancels; returns ``z_loss`` scaled alike.

        It cancels in a "mean" over the weight mass W (``mean_by="mass"``): scaling every
        weight and ``z_loss`` by ``2**-e`` scales each loss row and W by ``2**-e``, exactly (a
        power of two), and leaves the mean and its gradient unchanged. The kernels then never
        see weights beyond the accumulation dtype's range: weights below float32's smallest
        subnormal (1.4e-45) would round to 0 in a float32 kernel while ``1 / W`` overflows,
        giving loss 0 and NaN gradients. ``z_loss`` may exceed the float32 range after
        scaling: the kernels form its terms in float64. With "sum" and "none" the losses are
        proportional to the weights: tiny weights give tiny losses and gradients, rounded to
        the output dtype (to 0 in float32 for 1e-46), never NaN; nothing is scaled there.
        """
        w = self.weight
        if w is None or self.reduction != "mean" or self.mean_by != "mass":
            return z_loss
        if self.empty == "one":  # W == 0 would become 1: the scale would not cancel
            return z_loss
        big = float(np.max(np.abs(w)))
        if big == 0:
            return z_loss
        e = math.frexp(big)[1] - 1
        try:
            scaled = math.ldexp(z_loss, -e)
        except OverflowError:  # z_loss / W beyond float64: leave everything as it is
            return z_loss
        self.weight = np.ldexp(w, -e)
        return scaled

    def denominator(self) -> float:
        """W of the mean (see MEAN_BY); NaN when it is 0 under ``empty="nan"``."""
        n = self.x2.shape[0]
        valid = np.ones(n, dtype=bool) if self.where is None else self.where.any(1)
        if self.mean_by == "mass":
            total = float(
                _core.target_mass(self.target, self.weight, self.ignore_index, valid).sum()
            )
        elif self.mean_by == "valid":
            if self.target.ndim == 2:  # soft targets have no ignored positions
                total = float(valid.sum())
            else:
                total = float(_core.target_mass(self.target, None, self.ignore_index, valid).sum())
        elif self.mean_by == "positions":
            total = float(n)
        else:
            total = float(self.x.shape[0])
        if total == 0 and self.empty == "one":
            return 1.0
        if total == 0 and self.empty == "nan":
            return float("nan")
        return total

    def zero_mass(self, total: float) -> bool:
        """Whether the SPEC's rule "W == 0: loss 0 and gradient 0" applies (``empty="zero"``)."""
        return self.reduction == "mean" and self.empty == "zero" and total == 0

    def row_scale(self, dloss: Any) -> tuple[np.ndarray, float]:
        """Per-row gradient multipliers for ``dloss``, and the mean denominator W."""
        n = self.x2.shape[0]
        loss_shape = self.batch_shape if self.reduction == "none" else ()
        d = v.dloss_array(dloss, loss_shape)
        if self.reduction == "none":
            return d.reshape(n), 1.0
        if self.reduction == "sum":
            return np.full(n, float(d)), 1.0
        total = self.denominator()
        # W == 0 or NaN (everything ignored, or an empty batch): gradient 0 (pytorch#70348).
        ok = total != 0 and total == total
        return np.full(n, float(d) / total if ok else 0.0), total

    def reduce(self, rows: np.ndarray, total: float | None = None) -> Any:
        """Reduce per-row float64 losses; returns a NumPy scalar or array of the input dtype."""
        out_type = self.x.dtype.type
        # Rounding to float16 may overflow to inf; that is the right float16 result, no warning.
        with np.errstate(over="ignore"):
            if self.reduction == "none":
                return rows.reshape(self.batch_shape).astype(self.x.dtype)
            s = float(rows.sum())
            if self.reduction == "sum":
                return out_type(s)
            if total is None:
                total = self.denominator()
            # W == 0: 0, never NaN (pytorch#70348), unless empty="nan" made W NaN.
            return out_type(s / total if total != 0 else 0.0)

    def to_layout(self, rows2: np.ndarray) -> np.ndarray:
        """(N, C) gradient rows back to the layout of x."""
        moved = rows2.reshape((*self.batch_shape, rows2.shape[1]))
        return moved if self.axis == moved.ndim - 1 else np.moveaxis(moved, -1, self.axis)


def _classes_last(a: np.ndarray, axis: int) -> np.ndarray:
    """``a`` with its class axis last (itself when it already is: moveaxis costs ~10 us)."""
    return a if axis == a.ndim - 1 else np.moveaxis(a, axis, -1)


def _rows(
    x: Any,
    target: Any,
    *,
    axis: Any,
    weight: Any,
    ignore_index: Any,
    reduction: Any,
    where: Any = None,
    name: str = "logits",
    mean_by: str = "mass",
    empty: str = "zero",
    negative_weight: bool = False,
) -> _Rows:
    arr = v.float_array(x, name)
    ax = v.class_axis(axis, arr.ndim, array=name)
    n_classes = v.nonempty_classes(arr, ax, name)
    ignore = v.ignore_index(ignore_index)
    red = v.reduction(reduction)
    t = v.target_array(target, arr, ax, ignore)
    w = v.class_weight(weight, n_classes, allow_negative=negative_weight)
    mask = v.where_mask(where, arr.shape)

    moved = _classes_last(arr, ax)
    batch_shape = moved.shape[:-1]
    x2 = moved.reshape(-1, n_classes)  # a view when possible, else a copy
    if t.dtype.kind == "f":
        t2 = _classes_last(t, ax).reshape(-1, n_classes)
    else:
        t2 = t.reshape(-1).astype(np.int64, copy=False)
    mask2 = None if mask is None else _classes_last(mask, ax).reshape(-1, n_classes)
    return _Rows(arr, ax, x2, t2, mask2, w, ignore, red, batch_shape, mean_by, empty)


LOSS_DEFAULTS: dict[str, Any] = {
    "axis": -1,
    "weight": None,
    "ignore_index": -100,
    "reduction": "mean",
    "label_smoothing": 0.0,
    "z_loss": 0.0,
    "softcap": None,
    "where": None,
    "soft_target_loss": "cross-entropy",
}


def fused(
    logits: Any,
    target: Any,
    *,
    want_grad: bool,
    dloss: Any,
    inplace: bool,
    backend: Any,
    axis: Any,
    weight: Any,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    where: Any,
    soft_target_loss: Any,
    mean_by: str = "mass",
    empty: str = "zero",
    negative_weight: bool = False,
    grad_dtype: Any = None,
) -> tuple[Any, np.ndarray | None]:
    """The one entry point of every fused loss: validate, flatten, pick a kernel, reduce.

    Public functions, ops objects, compat modes and front ends all call this. ``mean_by`` and
    ``empty`` choose how "mean" normalises (see MEAN_BY); the public API uses the SPEC's.
    ``negative_weight`` accepts negative class weights (compat modes of frameworks that do).
    ``grad_dtype`` (without ``inplace``) overrides the gradient's dtype, e.g. float32 for
    float16 logits whose gradient will be scaled again later and should be rounded only once.
    """
    if v.flag(inplace, "inplace"):
        v.inplace_buffer(logits)
        v.disjoint_from_buffer(logits, target=target, weight=weight, where=where, dloss=dloss)
    rows = _rows(
        logits,
        target,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        where=where,
        mean_by=v.choice(mean_by, MEAN_BY, "mean_by"),
        empty=v.choice(empty, EMPTY, "empty"),
        negative_weight=negative_weight,
    )
    z_loss = rows.unit_weights(v.z_loss(z_loss))
    opts = {
        "weight": rows.weight,
        "ignore_index": rows.ignore_index,
        "label_smoothing": v.label_smoothing(label_smoothing),
        "z_loss": z_loss,
        "softcap": v.softcap(softcap, rows.x.dtype),
        "where": rows.where,
        "kl": v.soft_target_loss(soft_target_loss) == "kl-divergence",
    }
    backend = v.backend(backend)
    if not want_grad:
        kernel = _dispatch.select(backend, rows.x2, rows.target, **opts)
        return rows.reduce(
            kernel(rows.x2, rows.target, row_scale=None, grad_out=None, **opts)
        ), None

    scale, total = rows.row_scale(dloss)
    x2 = rows.x2
    # In place, the gradient overwrites the rows: a view of the logits when the class axis is
    # last (no N x C allocation), else our own moved copy, which is copied back below.
    grad2 = x2 if inplace else np.empty(x2.shape, dtype=grad_dtype or rows.x.dtype)
    kernel = _dispatch.select(backend, x2, rows.target, grad_out=grad2, **opts)
    if rows.zero_mass(total):
        # W == 0: loss 0 and gradient exactly 0, whatever the logits (a NaN logit of a row of
        # zero weight would otherwise give 0 * NaN); for every kernel, in place or not.
        grad2[...] = 0
        loss = rows.reduce(np.zeros(x2.shape[0]), total)
    else:
        loss_rows = kernel(x2, rows.target, row_scale=scale, grad_out=grad2, **opts)
        loss = rows.reduce(loss_rows, total)
    if inplace:
        if not np.may_share_memory(grad2, logits):
            np.copyto(logits, rows.to_layout(grad2))
        return loss, logits
    return loss, rows.to_layout(grad2)


def softmax_cross_entropy(
    logits: Any,
    target: Any,
    /,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    where: Any = None,
    soft_target_loss: str = "cross-entropy",
    backend: str = "auto",
) -> Any:
    r"""Softmax cross-entropy of ``logits`` against class indices or a target distribution.

    For each position ``i`` (every index of ``logits`` but the class ``axis``):

    .. math::
        z = s \tanh(x / s) \text{ (if softcap } s\text{)}, \qquad
        \mathrm{lse}_i = \log\sum_c e^{z_{ic}}

        L_i = v_i \Bigl[\sum_c w_c q_{ic} (\mathrm{lse}_i - z_{ic})\Bigr]
              + v_i\,\zeta\,\mathrm{lse}_i^2

    with ``q = (1 - eps) y + eps / C`` (``y`` the one-hot of an index target, or the float
    target; ``eps = label_smoothing``, spread over the allowed classes only when ``where`` is
    given), ``w`` the class weights, ``zeta = z_loss`` and ``v_i = 0`` for positions whose index
    target equals ``ignore_index``. Any integer is a valid ``ignore_index``; one that no int64
    label can equal (outside ``[-2**63, 2**63)``, e.g. ``2**63``) ignores nothing, and so does
    ``-2**63``, which is reserved for that. ``soft_target_loss="kl-divergence"`` adds
    ``sum_c w_c q_c log q_c``, which turns the cross-entropy into the KL divergence.

    ``reduction="mean"`` divides the sum by ``W = sum_i v_i sum_c w_c y_ic`` (the target
    before smoothing), so index targets and their one-hot float targets give the same value
    with class weights; when ``W == 0`` the loss is 0 (never NaN).

    Returns a NumPy scalar of the logits' float dtype (``"sum"``, ``"mean"``) or an array of
    the batch shape (``"none"``). ``backend`` chooses the kernel: ``"auto"``, ``"numpy"`` or
    ``"numba"``.

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> x = np.array([[2.0, 2.0, 2.0], [0.0, 0.0, 1e6]])
    >>> round(float(softmaxce.softmax_cross_entropy(x, np.array([0, 2]))), 8)
    0.54930614
    >>> softmaxce.softmax_cross_entropy(x, np.array([0, 2]), reduction="none")
    array([1.09861229, 0.        ])
    >>> float(softmaxce.softmax_cross_entropy(x, np.array([-100, -100])))  # all ignored
    0.0

    References
    ----------
    PyTorch ``torch.nn.functional.cross_entropy`` (options and label-smoothing convention);
    Chowdhery et al., "PaLM" (2022), z-loss; Gemma 2 (2024), logit soft-capping.
    """
    loss, _ = fused(
        logits,
        target,
        want_grad=False,
        dloss=None,
        inplace=False,
        backend=backend,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        where=where,
        soft_target_loss=soft_target_loss,
    )
    return loss


def softmax_cross_entropy_with_grad(
    logits: Any,
    target: Any,
    /,
    *,
    dloss: Any = None,
    inplace: bool = False,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    where: Any = None,
    soft_target_loss: str = "cross-entropy",
    backend: str = "auto",
) -> tuple[Any, np.ndarray]:
    r"""The loss of :func:`softmax_cross_entropy` and its gradient, in one fused pass.

    Returns ``(loss, dlogits)`` with ``dlogits = dloss * d loss / d logits``; ``dloss`` is the
    upstream gradient (None means 1): a scalar for ``"sum"``/``"mean"``, an array of the loss's
    shape for ``"none"``. Per position, before ``dloss`` and the reduction,

    .. math:: \frac{\partial L_i}{\partial z_{ic}} = v_i\Bigl[\Bigl(\sum_k w_k q_{ik}\Bigr)
              p_{ic} - w_c q_{ic} + 2 \zeta\,\mathrm{lse}_i\, p_{ic}\Bigr]

    (``p = softmax(z)``), times ``1 / cosh(x / s)^2`` with a softcap. This is exact even when the
    target rows do not sum to 1. With ``inplace=True`` the gradient is written into ``logits``
    (which must be a writable, C-contiguous float array) and ``logits`` itself is returned:
    no N x C array is allocated. Otherwise no input is modified.

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> x = np.array([[1.0, 2.0, 3.0]])
    >>> loss, g = softmaxce.softmax_cross_entropy_with_grad(x, np.array([2]))
    >>> round(float(loss), 6), g.round(4)
    (0.407606, array([[ 0.09  ,  0.2447, -0.3348]]))
    >>> loss2, g2 = softmaxce.softmax_cross_entropy_with_grad(x, np.array([2]), inplace=True)
    >>> g2 is x
    True
    """
    loss, grad = fused(
        logits,
        target,
        want_grad=True,
        dloss=dloss,
        inplace=inplace,
        backend=backend,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        where=where,
        soft_target_loss=soft_target_loss,
    )
    return loss, grad  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Cross-entropy on probabilities
# --------------------------------------------------------------------------------------------


def cross_entropy(
    probs: Any,
    target: Any,
    /,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Any:
    r"""Cross-entropy of probabilities ``probs`` against class indices or a distribution.

    .. math:: L_i = -v_i \sum_c w_c\, y_{ic} \log p_{ic}

    with the reductions and the mean denominator ``W`` of :func:`softmax_cross_entropy`.
    Terms with ``y_ic = 0`` are 0 even where ``p_ic = 0``. To train, prefer the fused
    :func:`softmax_cross_entropy`, which never takes the log of a rounded probability.

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> p = np.array([[0.25, 0.25, 0.5]])
    >>> float(softmaxce.cross_entropy(p, np.array([2])).round(6))
    0.693147
    """
    rows = _rows(
        probs,
        target,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        name="probs",
    )
    rows.unit_weights(0.0)
    loss_rows, _ = _core.ce_rows(
        rows.x2, rows.target, weight=rows.weight, ignore_index=rows.ignore_index, row_scale=None
    )
    return rows.reduce(loss_rows)


def cross_entropy_vjp(
    probs: Any,
    target: Any,
    dloss: Any = None,
    /,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> np.ndarray:
    r"""Gradient of :func:`cross_entropy` with respect to ``probs``, times ``dloss``.

    .. math:: \frac{\partial L}{\partial p_{ic}} = -\,r_i\, \frac{w_c\, y_{ic}}{p_{ic}}

    where ``r_i`` is ``dloss`` (per position for ``"none"``), divided by ``W`` for ``"mean"``.

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> p = np.array([[0.25, 0.25, 0.5]])
    >>> softmaxce.cross_entropy_vjp(p, np.array([2]), 1.0)
    array([[ 0.,  0., -2.]])
    """
    rows = _rows(
        probs,
        target,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        name="probs",
    )
    rows.unit_weights(0.0)
    scale, _ = rows.row_scale(dloss)
    _, grad = _core.ce_rows(
        rows.x2, rows.target, weight=rows.weight, ignore_index=rows.ignore_index, row_scale=scale
    )
    with np.errstate(over="ignore"):  # -1/p beyond the float16 range is -inf, correctly
        grad = grad.astype(rows.x.dtype, copy=False)  # type: ignore[union-attr]
    return rows.to_layout(grad)


# --------------------------------------------------------------------------------------------
# Finite differences
# --------------------------------------------------------------------------------------------


def numerical_gradient(
    f: Callable[[np.ndarray], Any], x: Any, /, *, eps: float = 1e-6
) -> np.ndarray:
    r"""Central-difference gradient of a scalar function, in float64.

    .. math:: g_j = \frac{f(x + \epsilon e_j) - f(x - \epsilon e_j)}{2 \epsilon}

    ``f`` receives a float64 array of ``x``'s shape (the same buffer, perturbed in place and
    restored, so ``f`` must not keep it) and must return a scalar.

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> softmaxce.numerical_gradient(lambda a: (a ** 2).sum(), np.array([1.0, -2.0])).round(6)
    array([ 2., -4.])
    """
    if not callable(f):
        msg = f"f must be a callable returning a scalar, got {type(f).__name__}"
        raise TypeError(msg)
    step = v.positive_finite(eps, "eps")
    work = np.array(v.float_array(x, "x"), dtype=np.float64)  # our own copy
    flat = work.reshape(-1)
    grad = np.empty(flat.shape, dtype=np.float64)

    def value(arr: np.ndarray) -> float:
        result = f(arr)
        out = np.asarray(result)
        if out.dtype.kind not in "iuf":
            msg = f"f must return a real scalar, got {type(result).__name__} {result!r}"
            raise TypeError(msg)
        if out.shape != ():
            msg = f"f must return a scalar, got an array of shape {out.shape}"
            raise ValueError(msg)
        return float(out)

    for j in range(flat.size):
        orig = flat[j]
        flat[j] = orig + step
        up = value(work)
        flat[j] = orig - step
        down = value(work)
        flat[j] = orig
        grad[j] = (up - down) / (2.0 * step)
    return grad.reshape(work.shape)


def gradcheck(
    f: Callable[[np.ndarray], Any],
    grad: Callable[[np.ndarray], Any],
    x: Any,
    /,
    *,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
) -> bool:
    r"""Does ``grad(x)``, a claimed gradient of the scalar ``f``, match finite differences?

    Compares with :func:`numerical_gradient` as ``numpy.allclose(grad(x), numeric, rtol,
    atol)``. ``rtol`` and ``atol`` must be finite and >= 0, ``eps`` finite and > 0.

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> x = np.array([[0.3, -1.2, 2.0]])
    >>> f = lambda a: softmaxce.softmax_cross_entropy(a, np.array([1]))
    >>> g = lambda a: softmaxce.softmax_cross_entropy_with_grad(a, np.array([1]))[1]
    >>> softmaxce.gradcheck(f, g, x)
    True
    >>> softmaxce.gradcheck(f, lambda a: 2 * g(a), x)
    False
    """
    if not callable(grad):
        msg = f"grad must be a callable returning the gradient, got {type(grad).__name__}"
        raise TypeError(msg)
    rt = v.tolerance(rtol, "rtol")
    at = v.tolerance(atol, "atol")
    numeric = numerical_gradient(f, x, eps=eps)
    claimed = np.asarray(grad(np.array(v.float_array(x, "x"), dtype=np.float64)))
    if claimed.shape != numeric.shape:
        msg = f"grad must return an array of x's shape {numeric.shape}, got {claimed.shape}"
        raise ValueError(msg)
    return bool(np.allclose(claimed.astype(np.float64), numeric, rtol=rt, atol=at))
