"""The public NumPy functions: validate once, reshape to rows, call the core, reduce."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import _dispatch
from . import _validate as v
from ._core import softmax as _softmax
from ._core._xp import is_numpy
from ._options import loss_options
from ._problem import as_array, as_float, prepare, where_array
from ._run import run, run_probs

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


def _quiet():
    """NumPy's floating-point warnings off (overflow to inf, 0/0 are results here), whatever
    the namespace: array-api-strict (and others) compute with NumPy underneath."""
    return np.errstate(all="ignore")


def _unary(x: Any, axis: Any, where: Any, name: str = "x"):
    xp, arr = as_float(x, name)
    ax = v.class_axis(axis, arr.ndim, array=name)
    v.nonempty_classes(arr, ax, name)
    return xp, arr, ax, where_array(xp, arr, where)


def _rows_kernels(xp: Any, arr: Any, ax: int, mask: Any):
    """The numba row kernels for NumPy input they cover (see _dispatch.rows_kernels)."""
    return _dispatch.rows_kernels(arr, ax, mask) if is_numpy(xp) else None


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
    xp, arr, ax, mask = _unary(x, axis, where)
    kernels = _rows_kernels(xp, arr, ax, mask)
    if kernels is not None:
        x2 = arr.reshape(-1, arr.shape[-1])
        return kernels.softmax_rows(x2, np.empty_like(x2)).reshape(arr.shape)
    with _quiet():
        return _softmax.softmax(arr, ax, mask)


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
    xp, arr, ax, mask = _unary(x, axis, where)
    kernels = _rows_kernels(xp, arr, ax, mask)
    if kernels is not None:
        x2 = arr.reshape(-1, arr.shape[-1])
        return kernels.log_softmax_rows(x2, np.empty_like(x2)).reshape(arr.shape)
    with _quiet():
        return _softmax.log_softmax(arr, ax, mask)


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
    xp, arr, ax, mask = _unary(x, axis, where)
    kernels = _rows_kernels(xp, arr, ax, mask)
    if kernels is not None:
        out = kernels.logsumexp_rows(arr.reshape(-1, arr.shape[-1])).reshape(arr.shape[:-1])
        return out[..., None] if keepdims else out
    with _quiet():
        return _softmax.logsumexp(arr, ax, bool(keepdims), mask)


def _vjp_inputs(a: Any, dy: Any, axis: Any, name_a: str):
    xp, arr = as_float(a, name_a)
    _, d = as_float(as_array(xp, arr, dy, "dy"), "dy")
    v.same_shape(arr, d, name_a, "dy")
    ax = v.class_axis(axis, arr.ndim, array=name_a)
    v.nonempty_classes(arr, ax, name_a)
    return xp, arr, d, ax


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
    xp, arr, d, ax = _vjp_inputs(y, dy, axis, "y")
    with _quiet():
        return xp.astype(_softmax.softmax_vjp(arr, d, ax), xp.result_type(arr, d))


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
    xp, arr, d, ax = _vjp_inputs(logp, dy, axis, "logp")
    with _quiet():
        return xp.astype(_softmax.log_softmax_vjp(arr, d, ax), xp.result_type(arr, d))


def softmax_jacobian(y: Any, /, *, axis: int = -1) -> np.ndarray:
    r"""The softmax Jacobian ``diag(y) - y y^T`` for every row, from the softmax output ``y``.

    The result has shape ``y.shape + (C,)``: entry ``[..., i, ..., j]`` (``i`` at ``axis``,
    ``j`` the new last axis) is ``d y_i / d x_j = y_i (delta_ij - y_j)``. Prefer
    ``softmax_vjp``, which costs O(C) per row instead of O(C^2).

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> softmaxce.softmax_jacobian(np.array([0.5, 0.5]))
    array([[ 0.25, -0.25],
           [-0.25,  0.25]])
    """
    xp, arr = as_float(y, "y")
    ax = v.class_axis(axis, arr.ndim, array="y")
    v.nonempty_classes(arr, ax, "y")
    with _quiet():
        return xp.astype(_softmax.softmax_jacobian(arr, ax), arr.dtype)


# --------------------------------------------------------------------------------------------
# Losses: options built and inputs validated once, then one run
# --------------------------------------------------------------------------------------------


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
    opts = loss_options(
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        soft_target_loss=soft_target_loss,
    )
    problem = prepare(logits, target, opts, axis=axis, weight=weight, where=where)
    return run(problem, want_grad=False, backend=v.backend(backend))[0]


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
    r"""The loss of ``softmax_cross_entropy`` and its gradient, in one fused pass.

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
    if v.flag(inplace, "inplace"):
        v.inplace_buffer(logits)
        v.disjoint_from_buffer(logits, target=target, weight=weight, where=where, dloss=dloss)
    opts = loss_options(
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        soft_target_loss=soft_target_loss,
    )
    problem = prepare(logits, target, opts, axis=axis, weight=weight, where=where)
    return run(problem, want_grad=True, dloss=dloss, inplace=inplace, backend=v.backend(backend))


# --------------------------------------------------------------------------------------------
# Cross-entropy on probabilities
# --------------------------------------------------------------------------------------------


def _probs_problem(probs, target, axis, weight, ignore_index, reduction):
    opts = loss_options(reduction=reduction, ignore_index=ignore_index)
    return prepare(probs, target, opts, axis=axis, weight=weight, name="probs")


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

    with the reductions and the mean denominator ``W`` of ``softmax_cross_entropy``.
    Terms with ``y_ic = 0`` are 0 even where ``p_ic = 0``. To train, prefer the fused
    ``softmax_cross_entropy``, which never takes the log of a rounded probability.

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> p = np.array([[0.25, 0.25, 0.5]])
    >>> float(softmaxce.cross_entropy(p, np.array([2])).round(6))
    0.693147
    """
    problem = _probs_problem(probs, target, axis, weight, ignore_index, reduction)
    return run_probs(problem, want_grad=False)


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
    r"""Gradient of ``cross_entropy`` with respect to ``probs``, times ``dloss``.

    .. math:: \frac{\partial L}{\partial p_{ic}} = -\,r_i\, \frac{w_c\, y_{ic}}{p_{ic}}

    where ``r_i`` is ``dloss`` (per position for ``"none"``), divided by ``W`` for ``"mean"``.

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> p = np.array([[0.25, 0.25, 0.5]])
    >>> softmaxce.cross_entropy_vjp(p, np.array([2]), 1.0)
    array([[ 0.,  0., -2.]])
    """
    problem = _probs_problem(probs, target, axis, weight, ignore_index, reduction)
    return run_probs(problem, want_grad=True, dloss=dloss)


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

    Compares with ``numerical_gradient`` as ``numpy.allclose(grad(x), numeric, rtol,
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
