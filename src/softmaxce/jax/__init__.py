r"""softmaxce for JAX: the fused softmax cross-entropy and the softmax family of JAX arrays.

Every function has the semantics of the NumPy function of the same name (``softmaxce.
softmax_cross_entropy`` and so on: the same options, the same mean, the same edge cases) and
runs the same core (``softmaxce._core``) on the JAX arrays, so it works under ``jax.jit``,
``jax.grad``, ``jax.value_and_grad`` and ``jax.vmap``. The gradient is the core's formula
(a ``jax.custom_vjp``), not autodiff through the log-sum-exp. float16, bfloat16 and float32
logits accumulate in float32; float64 needs ``jax_enable_x64``. Results have the logits'
dtype. The options are Python values, static under ``jit``.

On the CPU, ``backend="auto"`` runs softmaxce's numba kernel behind XLA's typed FFI where it
can (float16/32/64 logits and index targets, see ``softmaxce.jax._ffi``): one pass gives
the loss and the gradient, and the backward only scales the gradient. Elsewhere (GPU/TPU,
bfloat16, probability targets, ``where``) the core runs as XLA operations.

Validation: everything about shapes, dtypes and options is checked at call (and trace) time.
Checks that need the data (labels in ``[0, C)`` or ``ignore_index``; class weights finite and
non-negative) run where the arrays are concrete, i.e. outside ``jit`` and ``vmap``. Under
``jit`` they cannot run (the values are unknown while tracing): a label outside the range
gives a meaningless loss for its row rather than an error, as JAX's own indexing does.

Inputs that are not JAX arrays (NumPy arrays, lists, numbers) are converted with
``jnp.asarray``.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> import softmaxce.jax as scj
>>> x = jnp.array([[2.0, 2.0, 2.0], [0.0, 0.0, 1e6]])
>>> round(float(scj.softmax_cross_entropy(x, jnp.array([0, 2]))), 6)
0.549306
>>> g = jax.grad(scj.softmax_cross_entropy)(x, jnp.array([0, 2]))
>>> g.astype(float).round(4).tolist()
[[-0.3333, 0.1667, 0.1667], [0.0, 0.0, 0.0]]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .. import _validate as v
from .._options import loss_options
from .._problem import as_float, prepare, where_array
from . import _vjp
from ._linear import linear_cross_entropy
from ._sharded import vocab_parallel_cross_entropy

__all__ = [
    "linear_cross_entropy",
    "log_softmax",
    "logsumexp",
    "softmax",
    "softmax_cross_entropy",
    "vocab_parallel_cross_entropy",
]

BACKENDS = ("auto", "xla", "ffi")


def as_jax(a: Any) -> Any:
    """``a`` as a JAX array (tracers and JAX arrays as they are; None stays None)."""
    if a is None or isinstance(a, jax.Array):
        return a
    return jnp.asarray(a)


def _unary(x: Any, axis: Any, where: Any):
    xp, arr = as_float(as_jax(x), "x")
    ax = v.class_axis(axis, arr.ndim, array="x")
    v.nonempty_classes(arr, ax, "x")
    return ax, arr, where_array(xp, arr, as_jax(where))


def softmax(x: Any, /, *, axis: int = -1, where: Any = None) -> jax.Array:
    r"""Softmax along ``axis``: ``exp(x - m) / sum(exp(x - m))``, ``m`` the maximum.

    As ``softmaxce.softmax``: entries where ``where`` is False get 0, a row with none
    allowed is all 0. The VJP is the core's ``y * (dy - sum(y * dy))``.

    Examples
    --------
    >>> import jax.numpy as jnp, softmaxce.jax as scj
    >>> scj.softmax(jnp.array([0.0, 0.0, 1e30])).tolist()
    [0.0, 0.0, 1.0]
    """
    ax, arr, mask = _unary(x, axis, where)
    return _vjp.softmax(ax, arr, mask)


def log_softmax(x: Any, /, *, axis: int = -1, where: Any = None) -> jax.Array:
    r"""``log softmax(x)`` along ``axis``, without forming the softmax; ``-inf`` where masked.

    Examples
    --------
    >>> import jax.numpy as jnp, softmaxce.jax as scj
    >>> scj.log_softmax(jnp.array([0.0, 0.0, 1e6])).tolist()
    [-1000000.0, -1000000.0, 0.0]
    """
    ax, arr, mask = _unary(x, axis, where)
    return _vjp.log_softmax(ax, arr, mask)


def logsumexp(x: Any, /, *, axis: int = -1, keepdims: bool = False, where: Any = None) -> jax.Array:
    r"""``log(sum(exp(x)))`` along ``axis`` (``-inf`` for a row with no allowed entry).

    Examples
    --------
    >>> import jax.numpy as jnp, softmaxce.jax as scj
    >>> x = jnp.array([1e30, 1e30])
    >>> bool(scj.logsumexp(x) == x[0])  # (1e30 + log 2 rounds to 1e30; no overflow)
    True
    """
    ax, arr, mask = _unary(x, axis, where)
    return _vjp.logsumexp(ax, bool(keepdims), arr, mask)


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
) -> jax.Array:
    r"""Softmax cross-entropy of JAX ``logits`` against class indices or a distribution.

    The loss of ``softmaxce.softmax_cross_entropy`` (same options, same ``"mean"`` over
    the target's weight mass, 0 when nothing counts), as a JAX array of the logits' dtype:
    a scalar for ``"mean"``/``"sum"``, the batch shape for ``"none"``. Differentiable with
    respect to the logits (the core's gradient formula), a float target and float class
    weights.

    ``backend``: ``"auto"`` (the numba kernel behind XLA's FFI on the CPU where it applies,
    else the core as XLA operations), ``"xla"`` (always the core), ``"ffi"`` (the kernel, or a
    ValueError saying why it cannot run).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, softmaxce.jax as scj
    >>> x = jnp.array([[1.0, 2.0, 3.0]])
    >>> loss, g = jax.value_and_grad(scj.softmax_cross_entropy)(x, jnp.array([2]))
    >>> round(float(loss), 6), g.astype(float).round(4).tolist()
    (0.407606, [[0.09, 0.2447, -0.3348]])
    >>> float(scj.softmax_cross_entropy(x, jnp.array([-100])))  # all ignored: 0, not NaN
    0.0
    """
    if backend not in BACKENDS:
        msg = f"backend must be one of {BACKENDS}, got {backend!r}"
        raise ValueError(msg)
    opts = loss_options(
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        soft_target_loss=soft_target_loss,
    )
    logits = as_jax(logits)
    p = prepare(logits, as_jax(target), opts, axis=axis, weight=as_jax(weight), where=as_jax(where))
    loss = _rows_loss(p, backend)
    return loss if opts.reduction != "none" else jnp.reshape(loss, p.batch_shape)


def _rows_loss(p: Any, backend: str) -> jax.Array:
    if backend != "xla":
        from . import _ffi

        why = _ffi.unsupported(p)
        if why is None:
            return _ffi.rows_loss(p.opts, p.x2, p.target, p.weight)
        if backend == "ffi":
            msg = f"backend='ffi' cannot run this call: {why}"
            raise ValueError(msg)
    block = _vjp.rows_per_block(*p.x2.shape)
    return _vjp.core_rows_loss(p.opts, block, p.x2, p.target, p.weight, p.where)
