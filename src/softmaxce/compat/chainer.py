"""``chainer.functions.softmax_cross_entropy`` on NumPy (Chainer v7 semantics).

Port by changing the import::

    # import chainer.functions as F; loss = F.softmax_cross_entropy(x, t)
    from softmaxce.compat.chainer import softmax_cross_entropy
    loss = softmax_cross_entropy(x, t)

The class axis is 1; ``x`` is ``(N, C)`` or ``(N, C, d1, ...)``. See ``docs/compat/chainer.md``
for every option and the documented differences (chiefly: the gradient for soft targets is the
exact gradient of the loss, where Chainer's assumes the target rows sum to 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _validate as v
from . import _common

__all__ = ["softmax_cross_entropy", "softmax_cross_entropy_with_grad"]

_CHK = _common.CHECKS["chainer"]
# The semantics, rows of softmaxce._semantics.TABLE (normalize=True, normalize=False).
_SEMANTICS = {True: "chainer", False: "chainer-batch"}


def _class_weight(class_weight: Any) -> np.ndarray | None:
    """Chainer's own checks: a 1-D array of a float dtype (both ValueError in Chainer)."""
    if class_weight is None:
        return None
    w = v.as_array(class_weight, "class_weight")
    if w.ndim != 1:
        msg = f"class_weight must be 1-dimensional (one weight per class), got shape {w.shape}"
        raise ValueError(msg)
    if w.dtype.kind != "f":
        msg = f"class_weight must have a floating-point dtype, got dtype {w.dtype}"
        raise ValueError(msg)
    return w


def _call(
    x, t, normalize, class_weight, ignore_label, reduce, soft_target_loss, *, want_grad, dloss
):
    red = v.choice(reduce, ("mean", "no"), "reduce")
    kind = v.choice(soft_target_loss, ("cross-entropy", "kl-divergence"), "soft_target_loss")
    arr = _common.logits_array(_CHK, x)
    if arr.ndim < 2:
        msg = f"x must have 2 or more dimensions (N, C, ...), got shape {arr.shape}"
        raise ValueError(msg)
    w = _class_weight(class_weight)
    labels = v.as_array(t, "t")
    kw = {"axis": 1, "want_grad": want_grad, "dloss": dloss, "reduction": "mean"}
    if red == "no":
        kw["reduction"] = "none"
    if labels.dtype.kind == "f":
        # Soft targets: no class weight, no ignored entries, the mean over positions (also
        # with normalize=False), KL with Chainer's log(t + 1e-7) (the row's kl_eps).
        return _common.call(_CHK, "chainer", arr, labels, kl=kind == "kl-divergence", **kw)
    if labels.dtype.kind not in "iu":
        msg = (
            f"t must be signed integer labels or a floating-point soft target of x's shape, "
            f"got dtype {labels.dtype}"
        )
        raise TypeError(msg)
    ignore = v.ignore_index(ignore_label, "ignore_label")
    sem = _SEMANTICS[bool(normalize)]
    return _common.call(_CHK, sem, arr, labels, weight=w, ignore=ignore, **kw)


def softmax_cross_entropy(
    x: Any,
    t: Any,
    normalize: bool = True,
    cache_score: bool = True,
    class_weight: Any = None,
    ignore_label: int = -1,
    reduce: str = "mean",
    enable_double_backprop: bool = False,
    soft_target_loss: str = "cross-entropy",
) -> Any:
    r"""Chainer's softmax cross-entropy of ``x`` (class axis 1) against labels ``t``.

    Integer ``t`` (shape of ``x`` without axis 1): per position
    ``\ell_i = w_{t_i} (\mathrm{lse}_i - x_{i,t_i})``, 0 where ``t == ignore_label``;
    ``reduce="mean"`` divides the sum by the number of positions not ignored
    (``normalize=True``) or by ``x.shape[0]`` (``normalize=False``), at least 1, never by the
    weights. Float ``t`` of ``x``'s shape is a soft target:
    ``\ell_i = -\sum_c t_{ic} \log p_{ic}`` (``"cross-entropy"``) or
    ``\sum_c t_{ic} (\log(t_{ic} + 10^{-7}) - \log p_{ic})`` (``"kl-divergence"``), no
    class weight or ignore applied, and the mean is over positions. ``reduce="no"`` returns
    the per-position losses. ``cache_score`` and ``enable_double_backprop`` are accepted and
    change no value (they are memory and autograd switches in Chainer).

    Examples
    --------
    >>> import numpy as np
    >>> from softmaxce.compat.chainer import softmax_cross_entropy
    >>> x = np.array([[-1, 0, 1, 2], [2, 0, 1, -1]]).astype(np.float32)
    >>> t = np.array([3, 0]).astype(np.int32)
    >>> round(float(softmax_cross_entropy(x, t)), 7)  # Chainer's docs print 0.44018972
    0.4401897
    """
    loss, _ = _call(
        x,
        t,
        normalize,
        class_weight,
        ignore_label,
        reduce,
        soft_target_loss,
        want_grad=False,
        dloss=None,
    )
    return loss


def softmax_cross_entropy_with_grad(
    x: Any,
    t: Any,
    normalize: bool = True,
    cache_score: bool = True,
    class_weight: Any = None,
    ignore_label: int = -1,
    reduce: str = "mean",
    enable_double_backprop: bool = False,
    soft_target_loss: str = "cross-entropy",
    *,
    dloss: Any = None,
) -> tuple[Any, np.ndarray]:
    """``softmax_cross_entropy`` and the exact gradient of the result with respect to ``x``.

    ``dloss`` is the upstream gradient (None means ones): a scalar for ``reduce="mean"``, an
    array of the result's shape for ``reduce="no"``. For soft targets whose rows do not sum to
    1 this is the true gradient ``(sum_c t_c) p - t``; Chainer's backward returns ``p - t``.

    Examples
    --------
    >>> import numpy as np
    >>> from softmaxce.compat.chainer import softmax_cross_entropy_with_grad
    >>> x = np.array([[0.0, 0.0]], np.float32)
    >>> softmax_cross_entropy_with_grad(x, np.array([1], np.int32))[1]
    array([[ 0.5, -0.5]], dtype=float32)
    """
    return _call(
        x,
        t,
        normalize,
        class_weight,
        ignore_label,
        reduce,
        soft_target_loss,
        want_grad=True,
        dloss=dloss,
    )
