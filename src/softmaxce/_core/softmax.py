"""Softmax, log-softmax, log-sum-exp and their vector-Jacobian products, for any array library.

The derivation, once:

* Shift by the row maximum ``m``: ``logsumexp(z) = m + log(sum(exp(z - m)))``. Every
  ``exp(z - m) <= 1``, so nothing overflows. A row whose maximum is ``-inf`` (all entries
  ``-inf`` or all masked) would give ``-inf - -inf = NaN``; such a maximum is replaced by 0,
  as scipy.special.logsumexp does (Blanchard, Higham & Higham 2021). ``+inf`` and NaN maxima
  are left alone so that they propagate to NaN, as in every framework.
* The sum is kept as two parts: ``ties``, the number of entries equal to the maximum (each
  contributes exactly 1), and ``rest``, the sum of the others. Then
  ``log s = log1p((ties - 1) + rest)``: when the maximum dominates, ``rest`` is tiny and
  ``log1p`` keeps its full relative accuracy (a confident row's loss of 1e-9 is not rounded to
  0). ``ties - 1`` is an exact integer.
* Accumulation is at least float32: float16 and bfloat16 inputs are computed in float32 and
  rounded once at the end; float64 stays float64.
"""

from __future__ import annotations

from typing import Any

from ._xp import NEG_INF, Array, acc_dtype, device, namespace


def max_ref(xp: Any, m: Array) -> Array:
    """The shift ``m`` of a row maximum: itself, or 0 where it is ``-inf``."""
    return xp.where(m == NEG_INF, 0.0, m)


def log_sum(xp: Any, ties: Array, rest: Array) -> Array:
    """``log(ties + rest)`` as ``log1p((ties - 1) + rest)`` when the maximum is present."""
    one = ties >= 1
    return xp.where(one, xp.log1p(xp.where(one, ties - 1, 0.0) + rest), xp.log(ties + rest))


def split_sum(xp: Any, d: Array, axis: int) -> tuple[Array, Array, Array]:
    """``(e, ties, rest)`` for shifted logits ``d = z - m`` (``-inf`` where masked).

    ``e = exp(d)``; ``ties`` counts the entries with ``d == 0`` and ``rest`` sums the others'
    ``e`` along ``axis`` (keepdims).
    """
    e = xp.exp(d)
    tie = d == 0
    ties = xp.sum(xp.astype(tie, e.dtype), axis=axis, keepdims=True)
    rest = xp.sum(xp.where(tie, 0.0, e), axis=axis, keepdims=True)
    return e, ties, rest


def shifted(x: Array, axis: int, where: Array | None):
    """``(d, e, s, log s, ref)`` with ``d = z - ref`` in the accumulation dtype, keepdims.

    Masked entries (``where`` False) have ``d = -inf`` and ``e = 0``.
    """
    xp = namespace(x, where)
    z = xp.astype(x, acc_dtype(xp, x.dtype))
    if where is not None:
        z = xp.where(where, z, NEG_INF)
    ref = max_ref(xp, xp.max(z, axis=axis, keepdims=True))
    d = z - ref
    e, ties, rest = split_sum(xp, d, axis)
    return d, e, ties + rest, log_sum(xp, ties, rest), ref


def softmax(x: Array, axis: int, where: Array | None) -> Array:
    """``exp(z - m) / s``; 0 at masked entries and in rows with no allowed entry."""
    xp = namespace(x, where)
    _, e, s, _, _ = shifted(x, axis, where)
    if where is not None:
        s = xp.where(s == 0, 1.0, s)  # a row with no allowed entry: softmax 0, not 0/0
    return xp.astype(e / s, x.dtype)


def log_softmax(x: Array, axis: int, where: Array | None) -> Array:
    """``(z - m) - log s``; ``-inf`` at masked entries."""
    xp = namespace(x, where)
    d, _, _, log_s, _ = shifted(x, axis, where)
    out = d - log_s
    if where is not None:
        out = xp.where(where, out, NEG_INF)
    return xp.astype(out, x.dtype)


def logsumexp(x: Array, axis: int, keepdims: bool, where: Array | None) -> Array:
    """``m + log s``; ``-inf`` for a row with no allowed entry."""
    xp = namespace(x, where)
    _, _, _, log_s, ref = shifted(x, axis, where)
    out = ref + log_s
    if not keepdims:
        out = xp.squeeze(out, axis=axis)
    return xp.astype(out, x.dtype)


def softmax_vjp(y: Array, dy: Array, axis: int) -> Array:
    """``dx = y * (dy - sum(y * dy))``: the Jacobian ``diag(y) - y y^T`` applied to ``dy``."""
    xp = namespace(y, dy)
    acc = acc_dtype(xp, xp.result_type(y, dy))
    y, dy = xp.astype(y, acc), xp.astype(dy, acc)
    return y * (dy - xp.sum(y * dy, axis=axis, keepdims=True))


def log_softmax_vjp(logp: Array, dy: Array, axis: int) -> Array:
    """``dx = dy - exp(logp) * sum(dy)``: the Jacobian ``I - 1 p^T`` transposed, applied."""
    xp = namespace(logp, dy)
    acc = acc_dtype(xp, xp.result_type(logp, dy))
    dy = xp.astype(dy, acc)
    return dy - xp.exp(xp.astype(logp, acc)) * xp.sum(dy, axis=axis, keepdims=True)


def softmax_jacobian(y: Array, axis: int) -> Array:
    """``J[..., i, ..., j] = y_i (delta_ij - y_j)``, ``i`` at ``axis`` and ``j`` appended."""
    xp = namespace(y)
    ym = xp.moveaxis(xp.astype(y, acc_dtype(xp, y.dtype)), axis, -1)
    n = ym.shape[-1]
    eye = xp.eye(n, dtype=ym.dtype, device=device(ym))
    jac = ym[..., :, None] * (eye - ym[..., None, :])
    return xp.moveaxis(jac, -2, axis)
